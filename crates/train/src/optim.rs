//! AdamW with its moments in the open, so that checkpoints can resume training exactly
//! (candle-nn's optimiser keeps them private).

use candle_core::{Result, Tensor, Var};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// AdamW over named variables; `frozen` names are left alone.
pub struct AdamW {
    pub config: AdamWConfig,
    pub vars: Vec<(String, Var)>,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    pub step: u64,
}

impl AdamW {
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<AdamW> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, var) in &vars {
            m.insert(name.clone(), var.as_tensor().zeros_like()?);
            v.insert(name.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(AdamW {
            config,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// One update with learning rate `lr` from the gradients of `loss`.
    pub fn backward_step(
        &mut self,
        loss: &Tensor,
        lr: f64,
        frozen: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (name, var) in &self.vars {
            if frozen(name) {
                continue;
            }
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = self.m.get_mut(name).expect("moment per var");
            *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = self.v.get_mut(name).expect("moment per var");
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
            let theta = var.as_tensor();
            let decayed = (theta * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}
