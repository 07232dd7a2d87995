//! Finding an adapter and opening a device, with every limit the adapter offers.

use crate::{Error, Result};

/// An open device and what we learned about it.
pub struct Gpu {
    /// Kept for `generate_report` (the live objects a leak test counts).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub instance: wgpu::Instance,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// shader-f16 was requested (the adapter has it and YANGTUO_NO_F16 is unset).
    pub f16: bool,
    /// The device stamps time into query sets (a profile's kernel times). Native only.
    pub timestamps: bool,
}

impl Gpu {
    pub fn describe(&self) -> String {
        format!(
            "wgpu {:?} {} ({:?}, {}{})",
            self.info.backend,
            self.info.name,
            self.info.device_type,
            if self.f16 { "shader-f16" } else { "f32 path" },
            if self.info.driver_info.is_empty() {
                String::new()
            } else {
                format!(", {}", self.info.driver_info)
            }
        )
    }

    /// True for a real GPU (not a software rasterizer such as lavapipe or SwiftShader).
    pub fn is_real_gpu(&self) -> bool {
        !matches!(self.info.device_type, wgpu::DeviceType::Cpu)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Pick an adapter: `WGPU_ADAPTER_NAME` (a case-insensitive substring) if set, else the
/// most GPU-like one (discrete, integrated, virtual, other, software). `WGPU_BACKEND`
/// limits the backends searched (e.g. `vulkan`).
#[cfg(not(target_arch = "wasm32"))]
async fn pick_adapter() -> Result<(wgpu::Instance, wgpu::Adapter)> {
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let mut adapters = instance.enumerate_adapters(backends).await;
    if adapters.is_empty() {
        return Err(Error::Device(
            "no wgpu adapter found (on Linux without a GPU, install Mesa's lavapipe: apt-get install \
             mesa-vulkan-drivers)"
                .into(),
        ));
    }
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let want_l = want.to_lowercase();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want_l));
        if adapters.is_empty() {
            return Err(Error::Device(format!(
                "WGPU_ADAPTER_NAME={want} matches none of the adapters: {}",
                names.join(", ")
            )));
        }
    }
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    Ok((instance, adapters.remove(0)))
}

#[cfg(target_arch = "wasm32")]
async fn pick_adapter() -> Result<(wgpu::Instance, wgpu::Adapter)> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Device(format!("this browser offers no WebGPU adapter: {e}")))?;
    Ok((instance, adapter))
}

pub async fn open(allow_f16: bool) -> Result<Gpu> {
    let (instance, adapter) = pick_adapter().await?;
    let info = adapter.get_info();
    let no_f16 = cfg!(not(target_arch = "wasm32"))
        && std::env::var("YANGTUO_NO_F16").is_ok_and(|v| v != "0");
    let f16 = adapter.features().contains(wgpu::Features::SHADER_F16) && allow_f16 && !no_f16;
    let timestamps = cfg!(not(target_arch = "wasm32"))
        && adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    let mut features = wgpu::Features::empty();
    features.set(wgpu::Features::SHADER_F16, f16);
    features.set(wgpu::Features::TIMESTAMP_QUERY, timestamps);
    // Ask for everything the adapter can do: the defaults cap buffers at 128 MiB / 256 MiB,
    // far below what a real GPU binds.
    let limits = adapter.limits();
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("yangtuo"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| Error::Device(format!("could not open {}: {e}", info.name)))?;
    Ok(Gpu {
        instance,
        device,
        queue,
        info,
        limits,
        f16,
        timestamps,
    })
}
