//! Pure math kernels.
