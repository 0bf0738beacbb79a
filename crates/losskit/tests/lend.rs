//! Losses on lent buffers ([`losskit_tensor::lend`], how the framework adapters run a loss
//! without a row kernel on a framework's `y_pred`): every such loss that takes `(B, C)` float
//! targets computes the same bits on lent buffers as on its own tensors, and a counting
//! allocator sees no more buffers of `y_pred`'s size than the call on tensors built beforehand —
//! no copy of `y_true` or `y_pred` — except where an op needs its own array (a reshape).
//! One test in this binary, so nothing else allocates meanwhile.

#[path = "adapters/big_allocations.rs"]
mod big_allocations;
use big_allocations::big_allocations;
use losskit::{Loss, Result, Tensor};

/// Losses that copy a lent input once (the op that needs an array of its own).
const COPIES: &[(&str, usize)] = &[("MultiLabelMarginLoss", 1)];

/// The loss and, when it is a scalar, its gradient with respect to `y_pred`.
fn run(loss: &dyn Loss, y_true: &Tensor, y_pred: &Tensor, grad: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let y_pred = if grad { y_pred.clone().requires_grad() } else { y_pred.clone() };
    let out = loss.call(y_true, &y_pred, None)?;
    let g = if grad && out.numel() == 1 { out.backward()?.get(&y_pred).map(|g| g.to_vec::<f32>()) } else { None };
    Ok((out.to_vec::<f32>(), g))
}

#[test]
fn losses_without_a_row_kernel_read_lent_buffers_in_place() {
    let (rows, cols) = (256, 1000);
    let shape = [rows, cols];
    let p: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 110.0 + 0.02).collect();
    let y: Vec<f32> = (0..rows * cols).map(|i| if i % cols == (i / cols * 7) % cols { 1.0 } else { 0.0 }).collect();
    let mse_of_tensor_ops =
        losskit::CustomLoss::new("custom_mse", |t: &Tensor, p: &Tensor| p.sub(t)?.square().mean(&[-1], false));
    let mut losses: Vec<(String, Box<dyn Loss>)> = vec![("custom_mse".into(), Box::new(mse_of_tensor_ops))];
    for info in losskit::list() {
        losses.push((info.class_name.clone(), losskit::get(&info.class_name).unwrap()));
    }
    let (own_t, own_p) = (Tensor::from_vec(y.clone(), &shape).unwrap(), Tensor::from_vec(p.clone(), &shape).unwrap());
    let mut checked = Vec::new();
    for (name, loss) in &losses {
        // Losses with a row kernel run on the slices themselves (`loss_on_slice`); those that
        // want other targets (labels, boxes, pairs) are not for these inputs.
        if losskit::row_kernel(loss.as_ref()).is_some() || run(loss.as_ref(), &own_t, &own_p, false).is_err() {
            continue;
        }
        let copies = COPIES.iter().find(|(n, _)| n == name).map_or(0, |&(_, c)| c);
        for grad in [false, true] {
            let mut want = None;
            let owned = big_allocations(|| want = Some(run(loss.as_ref(), &own_t, &own_p, grad).unwrap()));
            let mut got = None;
            let lent = big_allocations(|| {
                got = Some(losskit_tensor::lend(|l| {
                    let (t, p) = (l.tensor(&y, &shape).unwrap(), l.tensor(&p, &shape).unwrap());
                    run(loss.as_ref(), &t, &p, grad).unwrap()
                }))
            });
            let bits = |v: &(Vec<f32>, Option<Vec<f32>>)| {
                let b = |x: &Vec<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (b(&v.0), v.1.as_ref().map(b))
            };
            assert_eq!(bits(got.as_ref().unwrap()), bits(want.as_ref().unwrap()), "{name} (gradient: {grad})");
            assert_eq!(lent, owned + copies, "{name} (gradient: {grad}): big allocations, lent vs owned");
        }
        checked.push(name.as_str());
    }
    for name in ["custom_mse", "Dice", "Tversky", "SigmoidFocalCrossEntropy", "CrossEntropyLoss", "KLDivLoss"] {
        assert!(checked.contains(&name), "{name} was not checked: {checked:?}");
    }
}
