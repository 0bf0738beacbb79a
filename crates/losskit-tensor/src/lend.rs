//! Tensors on borrowed memory: a framework's buffer read in place for the length of a call.

use crate::fusion::{Expr, Foreign};
use crate::storage::Element;
use crate::{Error, Result, Tensor};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

/// Lends buffers to losskit for the call of `f`: [`Lender::tensor`] makes a constant tensor
/// whose values are the caller's buffer, read in place by element-wise ops and trailing-axis
/// sums (fusion's programs), [`Tensor::with_values`] (the fused loss kernels) and
/// [`Tensor::to_vec`]; any other op copies them once (into a pooled buffer the tensor keeps). How the framework adapters run a loss on a framework's
/// `y_pred` and `y_true` without copying them.
///
/// When `lend` returns, every loan ends: a lent tensor (or anything computed from it lazily)
/// that is still held — a graph kept for a later backward pass, a clone a closure stored — gets
/// its own copy of the values first, so it stays valid after the buffer is gone. Ending a loan
/// waits for the programs reading it (on other threads too).
///
/// ```
/// let buffer = vec![1.0f32, 2.0, 3.0, 4.0];
/// let total = losskit_tensor::lend(|lender| -> losskit_tensor::Result<f64> {
///     let x = lender.tensor(&buffer, &[2, 2])?;
///     x.square().sum_all().to_scalar()
/// })?;
/// assert_eq!(total, 30.0);
/// # Ok::<(), losskit_tensor::Error>(())
/// ```
pub fn lend<'data, R>(f: impl FnOnce(&Lender<'data>) -> R) -> R {
    let lender = Lender { lent: RefCell::new(Vec::new()), _data: PhantomData };
    // The loans end when `lender` is dropped, after `f` (also when `f` panics).
    f(&lender)
}

/// The loans of one [`lend`] call (see there).
pub struct Lender<'data> {
    lent: RefCell<Vec<Arc<Expr>>>,
    /// Invariant in `'data`: a buffer must outlive the whole `lend` call, not just the tensor.
    _data: PhantomData<fn(&'data ()) -> &'data ()>,
}

impl<'data> Lender<'data> {
    /// A constant tensor of `shape` (row-major) on `values`, read in place until the loan ends.
    ///
    /// Errors when `values.len()` is not the product of `shape`.
    pub fn tensor<T: Element>(&self, values: &'data [T], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(Error::shape(
                "lend",
                format!("{} values do not fill shape {:?} ({} values)", values.len(), shape, n),
            ));
        }
        let leaf = Expr::foreign(Foreign::new(values), T::DTYPE, shape);
        self.lent.borrow_mut().push(leaf.clone());
        Ok(Tensor::from_expr(leaf))
    }
}

impl Drop for Lender<'_> {
    fn drop(&mut self) {
        for leaf in self.lent.get_mut().drain(..) {
            // Held elsewhere: copied before the buffer goes. Held only here: nothing can read it
            // any more (a new handle is made only from an existing one), and the fence orders
            // the reads of whoever dropped the last other handle (its release decrement) before
            // the caller's next use of the buffer, as `Arc`'s own drop does.
            if Arc::strong_count(&leaf) > 1 {
                leaf.end_loan();
            } else {
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, k: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * k) % 101) as f32 / 50.0 - 1.0).collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect()
    }

    /// A Dice-like chain and its gradient, on tensors `p` and `y`.
    fn chain(y: &Tensor, p: &Tensor) -> (Tensor, Tensor) {
        let p = p.clone().requires_grad();
        let product = y.mul(&p).unwrap();
        let sums = Tensor::sum_many(&[&product, y, &p], &[0, 1], false).unwrap();
        let loss = sums[0].mul_scalar(2.0).unwrap().div(&sums[1].add(&sums[2]).unwrap()).unwrap().neg();
        let g = loss.backward().unwrap().get(&p).unwrap().clone();
        (loss, g)
    }

    #[test]
    fn lent_tensors_compute_what_owned_ones_do_bit_for_bit() {
        // Below and above the lazy threshold, across pieces.
        for rows in [3, 300, 5000] {
            let (yv, pv) = (values(rows * 17, 7), values(rows * 17, 13));
            let own = |v: &Vec<f32>| Tensor::from_vec(v.clone(), &[rows, 17]).unwrap();
            let (want_loss, want_grad) = chain(&own(&yv), &own(&pv));
            let (loss, grad) =
                lend(|l| chain(&l.tensor(&yv, &[rows, 17]).unwrap(), &l.tensor(&pv, &[rows, 17]).unwrap()));
            assert_eq!(bits(&loss), bits(&want_loss), "{rows} rows");
            assert_eq!(bits(&grad), bits(&want_grad), "{rows} rows");
        }
    }

    #[test]
    fn a_lent_tensor_kept_past_the_call_keeps_its_values() {
        for n in [10, 100_000] {
            let mut buffer = values(n, 7);
            let want = buffer.clone();
            let (kept, lazy) = lend(|l| {
                let t = l.tensor(&buffer, &[n]).unwrap();
                (t.clone(), t.mul_scalar(2.0).unwrap())
            });
            // The buffer is the caller's again: changing it changes nothing lent.
            buffer.fill(0.0);
            assert_eq!(kept.to_vec::<f32>(), want, "n {n}");
            let doubled: Vec<f32> = want.iter().map(|v| v * 2.0).collect();
            assert_eq!(lazy.to_vec::<f32>(), doubled, "n {n}: a lazy result of a lent tensor");
        }
    }

    #[test]
    fn a_loan_ends_after_the_reads_on_other_threads_and_they_never_see_the_buffer_change() {
        let n = 100_000;
        let mut buffer = values(n, 7);
        let want =
            Tensor::from_vec(buffer.clone(), &[n]).unwrap().mul_scalar(3.0).unwrap().sum_all().to_scalar().unwrap();
        let stop = &std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let (escaped_tx, escaped_rx) = std::sync::mpsc::channel();
            let reader = s.spawn(move || {
                let t: Tensor = escaped_rx.recv().unwrap();
                let mut reads = 0;
                while reads < 3 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A fused program over the lent leaf (or, once the loan has ended, its copy).
                    let got = t.mul_scalar(3.0).unwrap().sum_all().to_scalar().unwrap();
                    assert_eq!(got.to_bits(), want.to_bits(), "read {reads}");
                    reads += 1;
                }
                reads
            });
            lend(|l| escaped_tx.send(l.tensor(&buffer, &[n]).unwrap()).unwrap());
            // The loan has ended: the buffer is the caller's to change.
            buffer.fill(f32::NAN);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().unwrap() >= 3);
        });
    }

    #[test]
    fn a_loan_ending_while_another_thread_computes_the_leaf_gives_its_values() {
        // The other thread forces the leaf (a copy into its own value) as the loan ends: each
        // waits for the other's lock at most, never for both.
        let n = 50_000;
        let buffer = values(n, 11);
        for round in 0..100 {
            let got = std::thread::scope(|s| {
                let (tx, rx) = std::sync::mpsc::channel::<Tensor>();
                let forcing = s.spawn(move || rx.recv().unwrap().to_array::<f32>().into_raw_vec_and_offset().0);
                lend(|l| tx.send(l.tensor(&buffer, &[n]).unwrap()).unwrap());
                forcing.join().unwrap()
            });
            assert_eq!(got, buffer, "round {round}");
        }
    }

    #[test]
    fn a_shape_that_does_not_fit_is_an_error() {
        let buffer = [1.0f64, 2.0, 3.0];
        let e = lend(|l| l.tensor(&buffer, &[2, 2]).unwrap_err());
        assert!(e.to_string().contains("3 values do not fill shape [2, 2]"), "{e}");
    }
}
