//! Synthetic models: random weights with the exact shapes of published models.

mod rng;

pub use rng::Rng;
