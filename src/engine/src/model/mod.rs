//! Model config, weights and forward pass.
