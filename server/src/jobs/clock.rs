//! An injectable clock: retention's recovery window and the scheduler's missed-run detection
//! read the time through [`crate::backup::Backups::now`], which tests point at a [`Clock`] of
//! their own instead of waiting days.

use std::sync::Arc;
use std::time::SystemTime;

/// A source of the current time.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A clock that is always `offset` ahead of (or, negative, behind) the system clock.
pub fn offset(offset_secs: i64) -> Clock {
    Arc::new(move || {
        let now = SystemTime::now();
        let d = std::time::Duration::from_secs(offset_secs.unsigned_abs());
        if offset_secs >= 0 {
            now + d
        } else {
            now - d
        }
    })
}
