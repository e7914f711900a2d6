//! Loading named weights with a strict key check.
//!
//! A candle `VarMap` silently invents a missing weight; here every key the model asks for
//! is looked up in the file, and all missing or mis-shaped keys are reported together.

use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("the checkpoint lacks {} weight(s) the model needs: {}", .0.len(), .0.join(", "))]
    Missing(Vec<String>),
    #[error("weights with the wrong shape: {}", .0.join("; "))]
    Shape(Vec<String>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

#[derive(Default)]
struct Log {
    missing: Vec<String>,
    bad_shape: Vec<String>,
    used: BTreeSet<String>,
}

/// A map of tensors with a key prefix, like candle's `VarBuilder`, that records problems
/// instead of inventing weights.
#[derive(Clone)]
pub struct Weights {
    tensors: Rc<HashMap<String, Tensor>>,
    prefix: String,
    log: Rc<RefCell<Log>>,
    pub dtype: DType,
    pub device: Device,
    /// Build the NHWC CPU kernels ([`crate::cpu_kernels`]) instead of candle convolutions.
    pub cpu_kernels: bool,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Weights {
            tensors: Rc::new(tensors),
            prefix: String::new(),
            log: Default::default(),
            dtype,
            device: device.clone(),
            cpu_kernels: false,
        }
    }

    /// A view with `name.` appended to the prefix (mirrors PyTorch module paths).
    pub fn pp(&self, name: &str) -> Weights {
        let mut w = self.clone();
        w.prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        w
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Shape of `prefix.name` in the file, if present.
    pub fn get_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(&self.key(name)).map(|t| t.dims().to_vec())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.key(name))
    }

    /// The tensor `prefix.name` with the given shape, converted to this dtype and device.
    /// A missing or mis-shaped key is recorded and a zero tensor stands in until
    /// [`Weights::finish`] reports it.
    pub fn get(&self, shape: &[usize], name: &str) -> candle_core::Result<Tensor> {
        let key = self.key(name);
        let mut log = self.log.borrow_mut();
        match self.tensors.get(&key) {
            Some(t) if t.dims() == shape => {
                log.used.insert(key);
                t.to_dtype(self.dtype)?.to_device(&self.device)
            }
            Some(t) => {
                log.bad_shape
                    .push(format!("{key}: file {:?}, model {:?}", t.dims(), shape));
                Tensor::zeros(shape, self.dtype, &self.device)
            }
            None => {
                log.missing.push(key);
                Tensor::zeros(shape, self.dtype, &self.device)
            }
        }
    }

    /// Errors if any key was missing or mis-shaped; returns the file's unused keys
    /// (e.g. `AuxLogits.*`, `num_batches_tracked`), which are fine to ignore.
    pub fn finish(&self) -> Result<Vec<String>, WeightsError> {
        let log = self.log.borrow();
        if !log.missing.is_empty() {
            return Err(WeightsError::Missing(log.missing.clone()));
        }
        if !log.bad_shape.is_empty() {
            return Err(WeightsError::Shape(log.bad_shape.clone()));
        }
        let mut unused: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !log.used.contains(*k))
            .cloned()
            .collect();
        unused.sort();
        Ok(unused)
    }
}
