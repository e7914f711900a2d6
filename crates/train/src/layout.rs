//! The names under which `train` stores what a checkpoint carries beyond the model's
//! weights; the writer ([`crate::open_set::seal`]) and the readers ([`crate::inference`],
//! `predict`) take them from here.

/// Prefix of the open-set tensors: not weights of the model.
pub const OPEN_SET_PREFIX: &str = "open_set.";
/// Checkpoint tensors of the descriptor score: gallery descriptors [n, dim] and their
/// classes [n] (as f32).
pub const GALLERY_KEY: &str = "open_set.gallery";
pub const GALLERY_LABELS_KEY: &str = "open_set.gallery_labels";
/// The model config's key of the open-set rule ([`crate::open_set::OpenSet`]).
pub const OPEN_SET_CONFIG_KEY: &str = "open_set";
/// The model config's key of the recipe ([`crate::provenance::recipe`]).
pub const RECIPE_CONFIG_KEY: &str = "recipe";
