//! A regularizer's gradient folded into the optimizer's update: the update streams the weight
//! and its gradient anyway, so each piece's total gradient `t = g + ∂penalty/∂w` is made on
//! the stack from the weight's values before the update changes them, and the rule's update
//! runs on the piece with `t`. The gradient buffer is only read, once; the values are those of
//! adding the penalty's gradient into the buffer first (the rules folded here are element by
//! element, and the pieces start at multiples of every kernel's lane count).

use losskit_tensor::Element;

/// Values per piece: its total gradient lives on the stack (16 KiB in f32).
const PIECE: usize = 4096;
/// From this many values on, a weight's pieces are shared among the pool's threads (the rule
/// kernels' own threshold); fewer run on the calling thread.
const PARALLEL_MIN: usize = 1 << 17;
/// The most rule slots a weight keeps (Adam with amsgrad, RMSprop centered with momentum).
const MAX_RULE_SLOTS: usize = 3;

/// The update `step(w, t, slots, average)` of the weight `w` with the total gradients
/// `t = total(w, g)`, run piece by piece (in parallel for a large weight); `slots` (at most
/// three, each as long as `w`) and `average` are split with it.
pub(super) fn fold_update<T: Element>(
    w: &mut [T],
    g: &[T],
    slots: &mut [&mut [T]],
    average: Option<&mut [T]>,
    total: impl Fn(T, T) -> T + Sync,
    step: impl Fn(&mut [T], &[T], &mut [&mut [T]], Option<&mut [T]>) + Sync,
) {
    assert!(slots.len() <= MAX_RULE_SLOTS, "at most {MAX_RULE_SLOTS} rule slots");
    let mut s: [&mut [T]; MAX_RULE_SLOTS] = Default::default();
    for (to, from) in s.iter_mut().zip(slots.iter_mut()) {
        *to = std::mem::take(from);
    }
    let piece = Piece { w, g, s, k: slots.len(), average };
    run(piece, &total, &step);
}

/// A run of a weight's values and the same run of its gradient and slots.
struct Piece<'a, T> {
    w: &'a mut [T],
    g: &'a [T],
    s: [&'a mut [T]; MAX_RULE_SLOTS],
    /// How many of `s` are the weight's.
    k: usize,
    average: Option<&'a mut [T]>,
}

impl<'a, T> Piece<'a, T> {
    /// The first `mid` values, and the rest.
    fn split(self, mid: usize) -> (Piece<'a, T>, Piece<'a, T>) {
        let (w1, w2) = self.w.split_at_mut(mid);
        let (g1, g2) = self.g.split_at(mid);
        let (mut s1, mut s2): ([&mut [T]; MAX_RULE_SLOTS], [&mut [T]; MAX_RULE_SLOTS]) = Default::default();
        for (j, slot) in self.s.into_iter().enumerate().take(self.k) {
            (s1[j], s2[j]) = slot.split_at_mut(mid);
        }
        let (a1, a2) = match self.average {
            Some(a) => {
                let (x, y) = a.split_at_mut(mid);
                (Some(x), Some(y))
            }
            None => (None, None),
        };
        (Piece { w: w1, g: g1, s: s1, k: self.k, average: a1 }, Piece { w: w2, g: g2, s: s2, k: self.k, average: a2 })
    }
}

/// Halves `p` at a multiple of [`PIECE`] down to single pieces (the halves in parallel while
/// large), each updated with its total gradient made on the stack.
fn run<T: Element>(
    mut p: Piece<'_, T>,
    total: &(impl Fn(T, T) -> T + Sync),
    step: &(impl Fn(&mut [T], &[T], &mut [&mut [T]], Option<&mut [T]>) + Sync),
) {
    let n = p.w.len();
    if n > PIECE {
        let (a, b) = p.split(n.div_ceil(PIECE) / 2 * PIECE);
        if n >= PARALLEL_MIN {
            rayon::join(|| run(a, total, step), || run(b, total, step));
        } else {
            run(a, total, step);
            run(b, total, step);
        }
        return;
    }
    let mut t = [T::zero(); PIECE];
    let t = &mut t[..n];
    total_gradients(t, p.w, p.g, total);
    step(p.w, t, &mut p.s[..p.k], p.average);
}

// The total gradients compiled for AVX-512 or AVX2 where the CPU has them (element by
// element: the same values in any build).
losskit_kernels::isa_dispatch!(total_gradients, total_gradients_body, <T: Element, D: Fn(T, T) -> T>, (t: &mut [T], w: &[T], g: &[T], total: &D));

/// `t = total(w, g)` element by element.
#[inline(always)]
fn total_gradients_body<T: Element, D: Fn(T, T) -> T>(t: &mut [T], w: &[T], g: &[T], total: &D) {
    t.iter_mut().zip(w.iter().zip(g)).for_each(|(t, (&w, &g))| *t = total(w, g));
}
