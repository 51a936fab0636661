//! The machine as a resource shared by the tests of this binary. libtest runs tests in
//! parallel, so every test that starts processes holds a share of it while they run, and a
//! test whose assertions are timing bounds (a stall of at most so many ms) holds all
//! of it: its bound must measure the cluster under test, not a neighbour's load.
//!
//! Shares never wait for a test that is only waiting for the whole machine: a test may start a
//! second server while holding a share, and waiting there would deadlock. The whole machine is
//! taken at the first moment no share is held; with a couple of test threads such moments come
//! between every two tests.

use std::sync::{Condvar, Mutex, MutexGuard};

struct Use {
    shares: usize,
    whole: bool,
}

static USE: Mutex<Use> = Mutex::new(Use {
    shares: 0,
    whole: false,
});
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, Use> {
    // A test that panicked while holding the lock left the counts consistent: every change
    // is a single assignment.
    USE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a test holds of the machine while its processes run; released when dropped.
pub struct MachineHold {
    whole: bool,
}

/// Waits while another test holds the whole machine, then takes a share of it.
pub fn share_machine() -> MachineHold {
    let mut machine = lock();
    while machine.whole {
        machine = CHANGED
            .wait(machine)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    machine.shares += 1;
    MachineHold { whole: false }
}

/// For a test that asserts timing bounds: waits until no other test holds a share or the whole
/// machine, then takes all of it.
pub fn take_whole_machine() -> MachineHold {
    let mut machine = lock();
    while machine.whole || machine.shares > 0 {
        machine = CHANGED
            .wait(machine)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    machine.whole = true;
    MachineHold { whole: true }
}

impl Drop for MachineHold {
    fn drop(&mut self) {
        let mut machine = lock();
        if self.whole {
            machine.whole = false;
        } else {
            machine.shares -= 1;
        }
        drop(machine);
        CHANGED.notify_all();
    }
}
