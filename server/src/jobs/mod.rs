//! What the server does on its own or on request, beside serving WAL: the scheduler
//! ([`scheduler`]), retention ([`retention`]), recovery drills ([`drill`]), the checks against
//! PostgreSQL and the archive ([`checks`]), replication slots and standbys of the primary
//! ([`replication`]), the record and progress of every run ([`runs`]), and the clock they read
//! ([`clock`]).

pub mod checks;
pub mod clock;
pub mod drill;
pub mod replication;
pub mod retention;
pub mod runs;
pub mod scheduler;
