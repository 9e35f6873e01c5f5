//! Reports built from the system's own records.

pub(crate) mod evidence;
