//! Thread-local switches (gradient recording, fusion) set for the duration of a closure.

use std::cell::Cell;

/// Runs `f` with the thread-local `flag` set to `value`, restoring it afterwards (also when
/// `f` panics).
pub(crate) fn with_flag<R>(flag: &'static std::thread::LocalKey<Cell<bool>>, value: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|g| g.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|g| g.replace(value)));
    f()
}
