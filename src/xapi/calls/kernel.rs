//! The kernel/ramdisk calls (DESIGN §2): `copy_vdi`, `create_kernel_ramdisk`,
//! `remove_kernel_ramdisk` of the `kernel` plugin, and Diablo's `copy_kernel_vdi` and
//! `remove_kernel_ramdisk` of the `glance` plugin. Their arguments are plain strings
//! (`pluginlib_nova.exists` / `optional`), no pickle; the work is in
//! [`crate::xapi::kernel`].

use super::{Args, CallError, FromArgs, Op, PluginCall, Result, Value};
use crate::xapi::kernel;
use crate::xenapi::XenApi;

/// `vdi-ref`, `image-size`, optional `cached-image`.
struct CopyArgs {
    vdi: String,
    size: u64,
    cached: Option<String>,
}

impl CopyArgs {
    fn parse(a: &Args, with_cache: bool) -> Result<CopyArgs> {
        let vdi = a.exists("vdi-ref")?;
        let size = a.exists("image-size")?;
        let size = size.trim().parse().map_err(|_| {
            CallError::Argument(format!("image-size {size:?} is not a number of bytes"))
        })?;
        let cached = if with_cache {
            a.optional("cached-image")?
        } else {
            None
        };
        Ok(CopyArgs {
            vdi: vdi.into(),
            size,
            cached: cached.map(Into::into),
        })
    }

    fn run(self, a: &Args) -> Result<Value> {
        let api = XenApi::local(a.session)?;
        let path = kernel::copy_vdi(&api, &self.vdi, self.size, self.cached.as_deref())?;
        Ok(Value::Text(path.display().to_string()))
    }
}

/// `copy_vdi` (kernel plugin, Folsom+): may also keep a cached copy.
pub struct CopyVdi(CopyArgs);

impl FromArgs for CopyVdi {
    fn from_args(a: &Args) -> Result<CopyVdi> {
        CopyArgs::parse(a, true).map(CopyVdi)
    }
}

impl PluginCall for CopyVdi {
    const NAME: &'static str = "copy_vdi";
    const OP: Op = Op::Other;

    fn run(self, a: &Args) -> Result<Value> {
        self.0.run(a)
    }
}

/// `copy_kernel_vdi` (glance plugin, Diablo): `copy_vdi` without the cache.
pub struct CopyKernelVdi(CopyArgs);

impl FromArgs for CopyKernelVdi {
    fn from_args(a: &Args) -> Result<CopyKernelVdi> {
        CopyArgs::parse(a, false).map(CopyKernelVdi)
    }
}

impl PluginCall for CopyKernelVdi {
    const NAME: &'static str = "copy_kernel_vdi";
    const OP: Op = Op::Other;

    fn run(self, a: &Args) -> Result<Value> {
        self.0.run(a)
    }
}

/// `create_kernel_ramdisk`: `cached-image`, `new-image-uuid`.
pub struct CreateKernelRamdisk {
    cached: String,
    new: String,
}

impl FromArgs for CreateKernelRamdisk {
    fn from_args(a: &Args) -> Result<CreateKernelRamdisk> {
        Ok(CreateKernelRamdisk {
            cached: a.exists("cached-image")?.into(),
            new: a.exists("new-image-uuid")?.into(),
        })
    }
}

impl PluginCall for CreateKernelRamdisk {
    const NAME: &'static str = "create_kernel_ramdisk";
    const OP: Op = Op::Other;

    fn run(self, _: &Args) -> Result<Value> {
        let made = kernel::create_kernel_ramdisk(&self.cached, &self.new)?;
        Ok(Value::Text(
            made.map(|p| p.display().to_string()).unwrap_or_default(),
        ))
    }
}

/// `remove_kernel_ramdisk`: `kernel-file`, `ramdisk-file`, the ones given.
pub struct RemoveKernelRamdisk(Vec<String>);

impl FromArgs for RemoveKernelRamdisk {
    fn from_args(a: &Args) -> Result<RemoveKernelRamdisk> {
        Ok(RemoveKernelRamdisk(
            [a.optional("kernel-file")?, a.optional("ramdisk-file")?]
                .into_iter()
                .flatten()
                .map(Into::into)
                .collect(),
        ))
    }
}

impl PluginCall for RemoveKernelRamdisk {
    const NAME: &'static str = "remove_kernel_ramdisk";
    const OP: Op = Op::Other;

    fn run(self, _: &Args) -> Result<Value> {
        let files: Vec<&str> = self.0.iter().map(String::as_str).collect();
        kernel::remove_kernel_ramdisk(&files)?;
        Ok(Value::Text("ok".into()))
    }
}
