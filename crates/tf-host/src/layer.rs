//! The Pattention layer: key and value parameter tokens with spare capacity,
//! grown by appending rows (docs/tokenformer.md, "Growth"; docs/design.md, "Growth semantics").
//!
//! K_P and V_P live in buffers of `capacity` rows of which the first `n` are the
//! layer's tokens. Growing within the capacity only initialises the new rows (in
//! place); growing past it copies the old rows into buffers 1.5× larger (or
//! exactly `n_new` if that is more), like `Vec`. Rows `[0, n_old)` are never
//! changed, bit for bit.

use tf_ref::{tensor_seed, Slot, TokenformerConfig};

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::{tensor_index, value_std, KEY_STD};
use crate::ops::grow::{grow_batch, GrowInit, GrowItem};
use crate::ops::pattention::{norm_scale, pattention_into, PattentionArgs, PattentionOptions};
use crate::tensor::{Tensor, View, ViewMut};
use crate::workspace::Workspace;

const OP: &str = "Pattention::grow";

/// How the rows appended by a growth are initialised.
#[derive(Clone, Copy, Debug)]
pub enum Init<'a, T: DType> {
    /// Zero keys and zero values.
    Zeros,
    /// Normal keys and values from Philox (docs/design.md): keys with `seed`, values
    /// with `seed ^ 0x9E37_79B9_7F4A_7C15`, element `r·cols + c` of each tensor.
    Normal {
        /// Standard deviation of the key tokens (the official init: 0.02).
        key_std: f32,
        /// Standard deviation of the value tokens (official: 2 / (L·√d)).
        value_std: f32,
        /// Philox key.
        seed: u64,
    },
    /// Given rows: keys `[n_new - n, d_in]` and values `[n_new - n, d_out]`, row-major.
    Rows {
        /// The new key rows.
        keys: &'a [T],
        /// The new value rows.
        values: &'a [T],
    },
}

/// Seed of the value tokens derived from a growth's seed.
pub const VALUE_SEED_XOR: u64 = 0x9E37_79B9_7F4A_7C15;

/// The sizes of a Pattention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PattentionShape {
    /// Parameter tokens (rows of `K_P` and `V_P`), at least 1.
    pub n: usize,
    /// Input width (columns of x and `K_P`).
    pub d_in: usize,
    /// Output width (columns of `V_P` and y).
    pub d_out: usize,
}

/// The random initialisation of a standalone layer ([`Pattention::random`]):
/// key tokens N(0, `key_std`²) and value tokens N(0, `value_std`²), element
/// `(r, c)` of each tensor drawn from the Philox stream of its seed at
/// `r·cols + c` (tf-ref's `philox_normal`, as every growth kernel draws it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomInit {
    /// Standard deviation of the key tokens, finite and >= 0 (the model's: 0.02).
    pub key_std: f32,
    /// Standard deviation of the value tokens, finite and >= 0 (the model's:
    /// `2 / (L·√d)`, L blocks of width d).
    pub value_std: f32,
    /// Philox key of the key tokens.
    pub key_seed: u64,
    /// Philox key of the value tokens.
    pub value_seed: u64,
}

impl RandomInit {
    /// The distribution the model gives its Pattentions (`Tokenformer::new`,
    /// tf-ref's `ModelParams::init`) for config `cfg`: keys N(0, 0.02²), values
    /// N(0, (2/(L·√d))²) with L = `cfg.layers`, d = `cfg.d` (the std rounded to
    /// f32). The keys are seeded with `seed` and the values with
    /// `seed ^ VALUE_SEED_XOR`, so a later [`Pattention::grow`] with
    /// [`Init::Normal`] and the same stds and seed continues both streams.
    pub fn official(cfg: &TokenformerConfig, seed: u64) -> RandomInit {
        RandomInit { key_std: KEY_STD, value_std: value_std(cfg), key_seed: seed, value_seed: seed ^ VALUE_SEED_XOR }
    }

    /// Exactly the init of Pattention `slot` of block `block` in a model made by
    /// `Tokenformer::new(dev, cfg, seed)`: the distribution of
    /// [`official`](Self::official) with the model's per-tensor seeds
    /// (`tf_ref::tensor_seed(seed, index)`, index as in
    /// `TokenformerConfig::tensor_names`). The block is not checked against
    /// `cfg.layers`.
    pub fn model_layer(cfg: &TokenformerConfig, seed: u64, block: usize, slot: Slot) -> RandomInit {
        RandomInit {
            key_std: KEY_STD,
            value_std: value_std(cfg),
            key_seed: tensor_seed(seed, tensor_index(block, slot, false)),
            value_seed: tensor_seed(seed, tensor_index(block, slot, true)),
        }
    }
}

/// A Pattention layer `y = Θ(x·K_Pᵀ)·V_P` that owns its parameter tokens.
///
/// ```
/// use tf_host::{Device, Norm, Pattention, PattentionOptions, PattentionShape, RandomInit, TokenformerConfig};
///
/// # fn main() -> tf_host::Result<()> {
/// let dev = Device::emulator();
/// let cfg = TokenformerConfig::by_name("tiny")?;
/// let shape = PattentionShape { n: 48, d_in: cfg.d, d_out: cfg.d };
/// let opts = PattentionOptions { norm: Norm::L2NormGelu, ..Default::default() };
/// let mut layer = Pattention::<f32>::random(&dev, shape, RandomInit::official(&cfg, 7), opts)?;
///
/// let t = 5;
/// let x_host: Vec<f32> = (0..t * cfg.d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
/// let x = dev.upload(&x_host, &[t, cfg.d])?;
/// let y = layer.forward(&x)?;
/// assert_eq!(y.shape(), &[t, cfg.d]);
///
/// // The same product on the CPU (tf-ref, f64) from the layer's tokens read back.
/// let (k, v) = (layer.keys().to_vec()?, layer.values().to_vec()?);
/// let want = tf_ref::pattention(
///     tf_ref::MatRef::new(&x_host, t, cfg.d)?,
///     tf_ref::MatRef::new(&k, 48, cfg.d)?,
///     tf_ref::MatRef::new(&v, 48, cfg.d)?,
///     &tf_ref::PattentionOpts { norm: tf_ref::Norm::L2NormGelu, ..Default::default() },
/// )?;
/// let err = y.to_f32_vec()?.iter().zip(&want.data).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
/// assert!(err < 1e-5, "max abs error {err}");
///
/// // Growth that keeps the function: zero new keys, n_ref pinned to 48.
/// layer.grow_preserving(96, tf_host::ValueInit::Normal { std: 0.02, seed: 1 })?;
/// assert_eq!((layer.n(), layer.options().n_ref), (96, Some(48)));
/// assert_eq!(layer.forward(&x)?.to_vec()?, y.to_vec()?);
/// # Ok(()) }
/// ```
pub struct Pattention<T: DType> {
    dev: Device,
    k_buf: Tensor<T>,
    v_buf: Tensor<T>,
    n: usize,
    opts: PattentionOptions,
}

impl<T: DType> std::fmt::Debug for Pattention<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pattention<{}>(n {} of capacity {}, d_in {}, d_out {}, {:?})",
            T::NAME,
            self.n,
            self.capacity(),
            self.d_in(),
            self.d_out(),
            self.opts
        )
    }
}

impl<T: DType> Pattention<T> {
    /// A layer from its key tokens `[n, d_in]` and value tokens `[n, d_out]`.
    ///
    /// Refused here rather than on every [`forward`](Self::forward): shapes that
    /// do not fit (`Error::Shape`), options out of range (`eps` negative or not
    /// finite, `n_ref = Some(0)`: `Error::InvalidArgument`), and for f16/bf16 a
    /// `d_in` or `d_out` that is not a multiple of 8 (`Error::Alignment`: the
    /// kernels read rows 16 bytes apart, so only a one-token layer applied to one
    /// row at a time could run).
    pub fn new(dev: &Device, k_p: Tensor<T>, v_p: Tensor<T>, opts: PattentionOptions) -> Result<Self> {
        const OP_NEW: &str = "Pattention::new";
        let (&[n, d_in], &[nv, d_out]) = (k_p.shape(), v_p.shape()) else {
            return Err(Error::Shape {
                op: OP_NEW,
                msg: format!("k_p and v_p must be 2-D, got {:?} and {:?}", k_p.shape(), v_p.shape()),
            });
        };
        if n != nv {
            return Err(Error::Shape {
                op: OP_NEW,
                msg: format!("k_p {:?} and v_p {:?} must have the same number of tokens", k_p.shape(), v_p.shape()),
            });
        }
        check_layer::<T>(OP_NEW, PattentionShape { n, d_in, d_out }, &opts)?;
        if !k_p.device().same(dev) || !v_p.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP_NEW });
        }
        Ok(Pattention { dev: dev.clone(), k_buf: k_p, v_buf: v_p, n, opts })
    }

    /// A layer of `shape` with random tokens drawn on the device (one launch of
    /// the growth kernel), checked as [`new`](Self::new) checks. With
    /// [`RandomInit::model_layer`] its tokens are those of the model's layer,
    /// bit for bit on one backend.
    pub fn random(dev: &Device, shape: PattentionShape, init: RandomInit, opts: PattentionOptions) -> Result<Self> {
        const OP_RANDOM: &str = "Pattention::random";
        check_layer::<T>(OP_RANDOM, shape, &opts)?;
        for (what, std) in [("key_std", init.key_std), ("value_std", init.value_std)] {
            if !(std.is_finite() && std >= 0.0) {
                return Err(Error::InvalidArgument {
                    op: OP_RANDOM,
                    msg: format!("{what} must be finite and >= 0, got {std}"),
                });
            }
        }
        let PattentionShape { n, d_in, d_out } = shape;
        let mut k = dev.zeros::<T>(&[n, d_in])?;
        let mut v = dev.zeros::<T>(&[n, d_out])?;
        let item = |dst, std, seed| GrowItem { src: None, dst, rows_old: 0, init: GrowInit::Normal { std, seed } };
        grow_batch(
            dev,
            vec![item(k.view_mut(), init.key_std, init.key_seed), item(v.view_mut(), init.value_std, init.value_seed)],
        )?;
        Pattention::new(dev, k, v, opts)
    }

    /// Number of parameter tokens.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Rows the buffers hold before the next growth must reallocate.
    pub fn capacity(&self) -> usize {
        self.k_buf.shape()[0]
    }
    /// Input width.
    pub fn d_in(&self) -> usize {
        self.k_buf.shape()[1]
    }
    /// Output width.
    pub fn d_out(&self) -> usize {
        self.v_buf.shape()[1]
    }
    /// `n`, `d_in` and `d_out`.
    pub fn shape(&self) -> PattentionShape {
        PattentionShape { n: self.n, d_in: self.d_in(), d_out: self.d_out() }
    }
    /// Norm, pinned n_ref and eps.
    pub fn options(&self) -> &PattentionOptions {
        &self.opts
    }
    /// Pins (or unpins, with `None`) the reference token count of the scale.
    /// `Some(0)` is refused (`Error::InvalidArgument`) and the layer unchanged.
    pub fn set_n_ref(&mut self, n_ref: Option<usize>) -> Result<()> {
        let opts = PattentionOptions { n_ref, ..self.opts };
        norm_scale("Pattention::set_n_ref", &opts, self.n)?;
        self.opts = opts;
        Ok(())
    }
    /// The key tokens `[n, d_in]` (a view into the capacity buffer).
    pub fn keys(&self) -> View<'_, T> {
        let d = self.d_in();
        // In bounds by construction: n <= capacity.
        self.k_buf.strided(0, &[self.n, d], &[d, 1]).unwrap_or_else(|_| self.k_buf.view())
    }
    /// The value tokens `[n, d_out]`.
    pub fn values(&self) -> View<'_, T> {
        let d = self.d_out();
        self.v_buf.strided(0, &[self.n, d], &[d, 1]).unwrap_or_else(|_| self.v_buf.view())
    }

    /// The key tokens `[n, d_in]` and value tokens `[n, d_out]`, writable (an
    /// optimizer updates them in place).
    pub(crate) fn tokens_mut(&mut self) -> Result<(ViewMut<'_, T>, ViewMut<'_, T>)> {
        let (n, d_in, d_out) = (self.n, self.d_in(), self.d_out());
        Ok((self.k_buf.strided_mut(0, &[n, d_in], &[d_in, 1])?, self.v_buf.strided_mut(0, &[n, d_out], &[d_out, 1])?))
    }

    /// The key and value tokens copied to the host, `[n, d_in]` and `[n, d_out]`
    /// row-major (checkpoints).
    pub(crate) fn download(&self) -> Result<(Vec<T>, Vec<T>)> {
        let mut k = self.k_buf.to_vec()?;
        let mut v = self.v_buf.to_vec()?;
        k.truncate(self.n * self.d_in());
        v.truncate(self.n * self.d_out());
        Ok((k, v))
    }

    /// `y = Θ(x·K_Pᵀ)·V_P`, x `[t, d_in]` → y `[t, d_out]`.
    pub fn forward(&self, x: &Tensor<T>) -> Result<Tensor<T>> {
        let t = x.shape().first().copied().unwrap_or(0);
        let mut y = self.dev.output::<T>(&[t, self.d_out()])?;
        self.forward_into(&x.view(), &mut y.view_mut(), None)?;
        Ok(y)
    }

    /// The same into a caller-given output and (optionally) workspace.
    pub fn forward_into(&self, x: &View<'_, T>, y: &mut ViewMut<'_, T>, ws: Option<&mut Workspace>) -> Result<()> {
        pattention_into(
            &self.dev,
            &PattentionArgs { x: x.clone(), k_p: self.keys(), v_p: self.values(), opts: self.opts },
            y,
            ws,
        )
    }

    /// Appends rows so the layer has `n_new` tokens; rows `[0, n)` are unchanged.
    pub fn grow(&mut self, n_new: usize, init: Init<'_, T>) -> Result<()> {
        let (k, v) = match init {
            Init::Zeros => (RowInit::Zeros, RowInit::Zeros),
            Init::Normal { key_std, value_std, seed } => (
                RowInit::Normal { std: key_std, seed },
                RowInit::Normal { std: value_std, seed: seed ^ VALUE_SEED_XOR },
            ),
            Init::Rows { keys, values } => (RowInit::Rows(keys), RowInit::Rows(values)),
        };
        self.grow_rows(OP, n_new, k, v)
    }

    /// Growth that leaves the layer's outputs unchanged (docs/tokenformer.md): the new
    /// KEY rows are zero (score 0, gelu(0) = 0, nothing added to the norm) and the
    /// scale keeps the current reference count (n_ref pinned). New value rows
    /// follow `value_init` (non-zero values let the new tokens train: with zero
    /// keys AND zero values their gradients would vanish). Refused for softmax,
    /// which no growth preserves (exp(0) = 1).
    pub fn grow_preserving(&mut self, n_new: usize, value_init: ValueInit) -> Result<()> {
        const OP_P: &str = "Pattention::grow_preserving";
        if self.opts.norm == crate::ops::pattention::Norm::Softmax {
            return Err(Error::InvalidArgument {
                op: OP_P,
                msg: "softmax cannot be preserved by growth (exp(0) = 1 adds mass); use grow".into(),
            });
        }
        let pinned = self.opts.n_ref.unwrap_or(self.n);
        let v = match value_init {
            ValueInit::Zeros => RowInit::Zeros,
            ValueInit::Normal { std, seed } => RowInit::Normal { std, seed },
        };
        self.grow_rows(OP_P, n_new, RowInit::Zeros, v)?;
        self.opts.n_ref = Some(pinned);
        Ok(())
    }

    /// Appends rows to both tensors in one launch: in place inside the capacity,
    /// else into buffers 1.5x larger with the old rows copied.
    fn grow_rows(&mut self, op: &'static str, n_new: usize, k: RowInit<'_, T>, v: RowInit<'_, T>) -> Result<()> {
        let mut staged = self.stage_growth(op, n_new)?;
        if n_new == self.n {
            return Ok(());
        }
        let new_rows = n_new - self.n;
        let k_rows = k.upload(&self.dev, op, new_rows, self.d_in())?;
        let v_rows = v.upload(&self.dev, op, new_rows, self.d_out())?;
        let (k_init, v_init) = (k.grow_init(k_rows.as_ref()), v.grow_init(v_rows.as_ref()));
        let dev = self.dev.clone();
        let items = self.growth_items(&mut staged, k_init, v_init)?;
        grow_batch(&dev, items)?;
        self.commit_growth(staged);
        Ok(())
    }

    /// First step of a growth to `n_new` tokens (several layers can be grown in
    /// ONE launch: stage each, gather every layer's [`growth_items`](Self::growth_items)
    /// into one `grow_batch`, then [`commit_growth`](Self::commit_growth) each).
    /// Checks `n_new` and allocates larger buffers when the capacity is exceeded;
    /// the layer itself is unchanged until the commit.
    pub(crate) fn stage_growth(&self, op: &'static str, n_new: usize) -> Result<StagedGrowth<T>> {
        if n_new < self.n {
            return Err(Error::InvalidArgument { op, msg: format!("cannot shrink from {} to {n_new} tokens", self.n) });
        }
        let bufs = if n_new > self.capacity() {
            let cap = n_new.max(self.capacity().saturating_add(self.capacity() / 2));
            Some((self.dev.zeros::<T>(&[cap, self.d_in()])?, self.dev.zeros::<T>(&[cap, self.d_out()])?))
        } else {
            None
        };
        Ok(StagedGrowth { n_new, bufs })
    }

    /// The two growth items (keys, values) of a staged growth: in place inside
    /// the capacity (nothing copied), else old rows copied into the new buffers.
    /// Empty when the token count does not change.
    pub(crate) fn growth_items<'a>(
        &'a mut self,
        staged: &'a mut StagedGrowth<T>,
        k_init: GrowInit<'a, T>,
        v_init: GrowInit<'a, T>,
    ) -> Result<Vec<GrowItem<'a, T>>> {
        let (d_in, d_out, n, n_new) = (self.d_in(), self.d_out(), self.n, staged.n_new);
        if n_new == n {
            return Ok(Vec::new());
        }
        Ok(match &mut staged.bufs {
            Some((k_new, v_new)) => {
                let this: &'a Self = self;
                vec![
                    GrowItem {
                        src: Some(this.keys()),
                        dst: k_new.strided_mut(0, &[n_new, d_in], &[d_in, 1])?,
                        rows_old: n,
                        init: k_init,
                    },
                    GrowItem {
                        src: Some(this.values()),
                        dst: v_new.strided_mut(0, &[n_new, d_out], &[d_out, 1])?,
                        rows_old: n,
                        init: v_init,
                    },
                ]
            }
            None => vec![
                GrowItem {
                    src: None,
                    dst: self.k_buf.strided_mut(0, &[n_new, d_in], &[d_in, 1])?,
                    rows_old: n,
                    init: k_init,
                },
                GrowItem {
                    src: None,
                    dst: self.v_buf.strided_mut(0, &[n_new, d_out], &[d_out, 1])?,
                    rows_old: n,
                    init: v_init,
                },
            ],
        })
    }

    /// Last step of a growth, after its items were launched: the layer takes the
    /// new buffers (if any) and the new token count.
    pub(crate) fn commit_growth(&mut self, staged: StagedGrowth<T>) {
        if let Some((k, v)) = staged.bufs {
            self.k_buf = k;
            self.v_buf = v;
        }
        self.n = staged.n_new;
    }
}

/// What every forward of a layer of `shape` with `opts` in storage type `T`
/// would refuse: no token, options out of range, 16-bit rows that are not 16
/// bytes apart.
fn check_layer<T: DType>(op: &'static str, shape: PattentionShape, opts: &PattentionOptions) -> Result<()> {
    let PattentionShape { n, d_in, d_out } = shape;
    if n == 0 {
        return Err(Error::Shape {
            op,
            msg: format!("n = 0 (d_in {d_in}, d_out {d_out}): a layer needs at least one parameter token"),
        });
    }
    norm_scale(op, opts, n)?;
    if std::mem::size_of::<T>() == 2 {
        for (what, d) in [("d_in", d_in), ("d_out", d_out)] {
            if d % 8 != 0 {
                return Err(Error::Alignment {
                    op,
                    msg: format!(
                        "{what} = {d}: {} storage needs a multiple of 8 (the kernels read x, K_P, V_P and y \
                         in 16-byte rows)",
                        T::NAME
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A growth checked and allocated but not yet launched (see
/// [`Pattention::stage_growth`]).
pub(crate) struct StagedGrowth<T: DType> {
    n_new: usize,
    /// New key and value buffers when the capacity is exceeded.
    bufs: Option<(Tensor<T>, Tensor<T>)>,
}

/// Initialisation of one tensor's new rows.
#[derive(Clone, Copy)]
enum RowInit<'a, T: DType> {
    Zeros,
    Normal { std: f32, seed: u64 },
    Rows(&'a [T]),
}

impl<'a, T: DType> RowInit<'a, T> {
    /// Host rows uploaded for a `Rows` init (checked against the row count).
    fn upload(&self, dev: &Device, op: &'static str, rows: usize, cols: usize) -> Result<Option<Tensor<T>>> {
        match self {
            RowInit::Rows(data) => {
                if data.len() != rows * cols {
                    return Err(Error::Shape {
                        op,
                        msg: format!("{rows} new rows of {cols} need {} elements, got {}", rows * cols, data.len()),
                    });
                }
                Ok(Some(dev.upload(data, &[rows, cols])?))
            }
            _ => Ok(None),
        }
    }

    fn grow_init<'t>(&self, uploaded: Option<&'t Tensor<T>>) -> GrowInit<'t, T> {
        match (self, uploaded) {
            (RowInit::Normal { std, seed }, _) => GrowInit::Normal { std: *std, seed: *seed },
            (RowInit::Rows(_), Some(t)) => GrowInit::Rows(t.view()),
            _ => GrowInit::Zeros,
        }
    }
}

/// Initialisation of the value rows in [`Pattention::grow_preserving`].
#[derive(Clone, Copy, Debug)]
pub enum ValueInit {
    /// Zero values (the new tokens then receive no gradient until keys move).
    Zeros,
    /// Normal values from Philox, element `r·d_out + c` of the value tensor.
    Normal {
        /// Standard deviation.
        std: f32,
        /// Philox key.
        seed: u64,
    },
}
