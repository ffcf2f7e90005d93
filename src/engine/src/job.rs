//! Resumable generation jobs.
