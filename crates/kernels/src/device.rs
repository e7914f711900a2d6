//! One device choice for every stage: `--device auto|cpu|cuda`.

use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when this build has the `cuda` feature and a GPU answers, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            o => Err(format!("unknown device `{o}` (auto, cpu or cuda)")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

/// Picks the device and logs which one it chose, and why.
pub fn pick(choice: DeviceChoice) -> candle_core::Result<Device> {
    let device = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                return Err(candle_core::Error::Msg(
                    "--device cuda, but this binary was built without the `cuda` feature; rebuild with `--features cuda`".into(),
                ));
            }
            Device::new_cuda(0)?
        }
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!("no usable GPU ({e}); falling back to CPU");
                        Device::Cpu
                    }
                }
            } else {
                Device::Cpu
            }
        }
    };
    tracing::info!("device: {}", describe(&device));
    Ok(device)
}

/// Whether `choice` would give a GPU (without logging; for choosing defaults).
pub fn cuda_available(choice: DeviceChoice) -> bool {
    match choice {
        DeviceChoice::Cpu => false,
        DeviceChoice::Cuda | DeviceChoice::Auto => {
            cfg!(feature = "cuda") && Device::new_cuda(0).is_ok()
        }
    }
}

/// `cpu` or `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda:0".into(),
        Device::Metal(_) => "metal".into(),
    }
}
