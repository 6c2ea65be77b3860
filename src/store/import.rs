//! Parsing Amazon's tab-separated order reports into [`crate::store::OrderRow`]s.
