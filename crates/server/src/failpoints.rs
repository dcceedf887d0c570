//! Fail points for crash tests. Built with the `failpoints` feature, a process reads the
//! `FAILPOINTS` environment variable at start-up, such as
//! `FAILPOINTS=saga::before::freeze_balance=return`; otherwise this does nothing.

/// Applies the fail points named in `FAILPOINTS`, when the feature is on.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    {
        // The scenario would clear the configuration when dropped; it must last as long as
        // the process.
        std::mem::forget(fail::FailScenario::setup());
    }
}
