//! ScanCloseJob: applies a finished scan's results to its tickets (and the
//! related tickets of the same devices), then updates the Detection table.

// The job that uses the decision tables is being written (issue 8).
#[allow(dead_code)]
pub mod decision;
