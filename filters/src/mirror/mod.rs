//! Shadow traffic: the comparator that tells whether a candidate backend answers like the
//! primary (see `compare`).

pub mod compare;
