//! Visitors over a module's parameters: the gradient's global norm and scaling, the EMA
//! update and linear combinations of modules, the float dtype.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// `‖g‖₂` over every parameter gradient of `model` in `grads`, on the host in f64.
#[cfg(test)]
pub(crate) fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    grad_norm_squared(model, grads).map_or(0.0, |s| s.into_scalar::<f64>().sqrt())
}

/// `‖g‖₂²` over every parameter gradient of `model` in `grads`, on the device (shape `[1]`,
/// the gradients' dtype); `None` if there are none.
pub(crate) fn grad_norm_squared<M: Module>(
    model: &M,
    grads: &GradientsParams,
) -> Option<Tensor<1>> {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc.add(s),
                    None => s,
                });
            }
        }
    }
    let mut visitor = SquaredNorm { grads, sum: None };
    model.visit(&mut visitor);
    visitor.sum
}

/// Multiplies every parameter gradient of `model` in `grads` by `factor`.
pub(crate) fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

/// Multiplies every parameter gradient of `model` in `grads` by `factor` (shape `[1]`, on
/// the gradients' device), without reading it.
pub(crate) fn scale_grads_by<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    factor: &Tensor<1>,
) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: &'a Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let factor = self.factor.clone().reshape([1; D]);
                self.grads.register(param.id, g.mul(factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

/// `ema ← d·ema + (1 − d)·θ`, parameter by parameter (matched by [`ParamId`]), outside
/// autodiff.
pub(super) fn ema_update<M: Module>(model: &M, ema: M, decay: f64) -> M {
    combine(ema, decay, model, 1.0 - decay)
}

/// `a·x + b·y` parameter by parameter (matched by [`ParamId`]), outside autodiff, in the
/// dtype and on the device of `x`; `y` may be on the autodiff device.
pub(super) fn combine<M: Module>(x: M, a: f64, y: &M, b: f64) -> M {
    /// The module's float parameters, flattened, without autodiff.
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().inner();
            let n = value.shape().num_elements();
            self.0.insert(param.id, value.reshape([n]));
        }
    }
    struct Update {
        y: HashMap<ParamId, Tensor<1>>,
        a: f64,
        b: f64,
    }
    impl ModuleMapper for Update {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, x, mapper) = param.consume();
            let x = match self.y.remove(&id) {
                Some(y) => {
                    let y = y.reshape(x.dims());
                    x.mul_scalar(self.a).add(y.mul_scalar(self.b))
                }
                None => x,
            };
            Param::from_mapped_value(id, x, mapper)
        }
    }
    let mut collect = Collect(HashMap::new());
    y.visit(&mut collect);
    let mut update = Update { y: collect.0, a, b };
    let x = x.map(&mut update);
    debug_assert!(update.y.is_empty(), "both modules have the same parameters");
    x
}

/// The float dtype of a module's first parameter, formatted (`"F32"`), or `"none"`.
pub(super) fn float_dtype<M: Module>(model: &M) -> String {
    struct First(Option<String>);
    impl ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(format!("{:?}", param.val().dtype()));
            }
        }
    }
    let mut first = First(None);
    model.visit(&mut first);
    first.0.unwrap_or_else(|| "none".into())
}
