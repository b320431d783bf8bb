//! The emulator's memory profile of a launch ([`last_profile`]).

use std::ffi::c_char;

use crate::sys;

/// One source location's memory requests in a profiled launch (summed over every
/// warp of the grid).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileLine {
    /// `kernels/…:line` (or a code address where the binary has no line tables).
    pub site: String,
    /// `"global"` or `"shared"`.
    pub space: String,
    /// `load`, `store`, `atomic`, `ldmatrix`, `cp.async-read` (its global side) or
    /// `cp.async-write` (its shared side).
    pub kind: String,
    /// Warp-level requests (instructions issued by warps).
    pub requests: u64,
    /// Bytes the lanes asked for.
    pub bytes: u64,
    /// Global: 32-byte sectors touched, summed over requests.
    pub sectors: u64,
    /// Global: 128-byte lines touched, summed over requests.
    pub lines: u64,
    /// Global: the fewest sectors that could hold the distinct bytes of each request
    /// (distinct bytes / 32), summed.
    pub ideal_sectors: u64,
    /// Shared: bank-conflict wavefronts, summed over requests.
    pub wavefronts: u64,
    /// Shared: wavefronts without bank conflicts.
    pub ideal_wavefronts: u64,
}

impl ProfileLine {
    /// Global: sectors per request (16 for 32 lanes loading 16 contiguous bytes each).
    pub fn sectors_per_request(&self) -> f64 {
        self.sectors as f64 / self.requests.max(1) as f64
    }

    /// Global: ideal sectors / sectors (1.0: fully coalesced).
    pub fn coalescing(&self) -> f64 {
        self.ideal_sectors as f64 / self.sectors.max(1) as f64
    }

    /// Shared: wavefronts / ideal wavefronts (1.0: no bank conflict).
    pub fn conflict_factor(&self) -> f64 {
        self.wavefronts as f64 / self.ideal_wavefronts.max(1) as f64
    }
}

/// The memory profile of one launch with [`Checks::profile`](super::Checks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// The kernel's name.
    pub kernel: String,
    /// Warps run (blocks × warps per block).
    pub warps: u64,
    /// Warp-level `mma.sync` instructions.
    pub mma: u64,
    /// Warp-level `ldmatrix` instructions.
    pub ldmatrix: u64,
    /// Warp-level `cp.async` instructions (requests of the shared side).
    pub cp_async: u64,
    /// `__syncthreads` completed (per block, summed).
    pub barriers: u64,
    /// Warp-level shuffles.
    pub shuffles: u64,
    /// Other warp collectives (votes, `__syncwarp`, reductions).
    pub other_collectives: u64,
    /// Distinct bytes of device memory the grid touched (a floor for DRAM traffic).
    pub unique_global_bytes: u64,
    /// Per source location and kind, in source order.
    pub lines: Vec<ProfileLine>,
}

impl Profile {
    /// Bytes of global memory moved in 32-byte sectors by all requests (what the L2
    /// serves; at least [`unique_global_bytes`](Self::unique_global_bytes)).
    pub fn global_sector_bytes(&self) -> u64 {
        self.lines.iter().filter(|l| l.space == "global").map(|l| l.sectors * 32).sum()
    }

    /// Lines of one kind (`load`, `ldmatrix`, …) in one space.
    pub fn of(&self, space: &str, kind: &str) -> impl Iterator<Item = &ProfileLine> {
        let (space, kind) = (space.to_string(), kind.to_string());
        self.lines.iter().filter(move |l| l.space == space && l.kind == kind)
    }

    fn parse(text: &str) -> Option<Profile> {
        let mut p = Profile::default();
        let num = |s: &str| s.parse::<u64>().ok();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["kernel", name] => p.kernel = (*name).to_string(),
                ["counts", w, mma, ldsm, _cp, bar, shfl, other] => {
                    p.warps = num(w)?;
                    p.mma = num(mma)?;
                    p.ldmatrix = num(ldsm)?;
                    p.barriers = num(bar)?;
                    p.shuffles = num(shfl)?;
                    p.other_collectives = num(other)?;
                }
                ["unique", b] => p.unique_global_bytes = num(b)?,
                ["line", site, space, kind, rest @ ..] if rest.len() == 7 => {
                    let v: Option<Vec<u64>> = rest.iter().map(|s| num(s)).collect();
                    let v = v?;
                    let l = ProfileLine {
                        site: (*site).to_string(),
                        space: (*space).to_string(),
                        kind: (*kind).to_string(),
                        requests: v[0],
                        bytes: v[1],
                        sectors: v[2],
                        lines: v[3],
                        ideal_sectors: v[4],
                        wavefronts: v[5],
                        ideal_wavefronts: v[6],
                    };
                    // Several code addresses can share a source line: merge them.
                    match p.lines.iter_mut().find(|x| x.site == l.site && x.space == l.space && x.kind == l.kind) {
                        Some(x) => {
                            x.requests += l.requests;
                            x.bytes += l.bytes;
                            x.sectors += l.sectors;
                            x.lines += l.lines;
                            x.ideal_sectors += l.ideal_sectors;
                            x.wavefronts += l.wavefronts;
                            x.ideal_wavefronts += l.ideal_wavefronts;
                        }
                        None => p.lines.push(l),
                    }
                }
                [""] => {}
                _ => return None,
            }
        }
        p.cp_async = p.of("shared", "cp.async-write").map(|l| l.requests).sum();
        p.lines.sort_by(|a, b| site_key(&a.site).cmp(&site_key(&b.site)).then(a.kind.cmp(&b.kind)));
        Some(p)
    }
}

/// (file, line) for sorting `file:line` sites in source order.
fn site_key(site: &str) -> (String, u64) {
    match site.rsplit_once(':') {
        Some((f, l)) => (f.to_string(), l.parse().unwrap_or(u64::MAX)),
        None => (site.to_string(), u64::MAX),
    }
}

/// The profile of the calling thread's last launch with
/// [`Checks::profile`](super::Checks) (the launch runs on the calling thread), or
/// `None` if it has made none.
pub fn last_profile() -> Option<Profile> {
    // SAFETY: a null buffer of length 0 only asks for the length.
    let n = unsafe { sys::tf_emu_last_profile(std::ptr::null_mut(), 0) };
    if n == 0 {
        return None;
    }
    let mut buf = vec![0u8; n + 1];
    // SAFETY: buf is writable for its length.
    unsafe { sys::tf_emu_last_profile(buf.as_mut_ptr().cast::<c_char>(), buf.len()) };
    buf.truncate(n);
    Profile::parse(&String::from_utf8_lossy(&buf))
}
