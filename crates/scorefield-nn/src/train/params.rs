//! Visitors over a module's parameters: the gradient's global norm and scaling, the EMA
//! update, the float dtype.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// `‖g‖₂` over every parameter gradient of `model` in `grads`, on the host in f64.
pub(crate) fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
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
    visitor.sum.map_or(0.0, |s| s.into_scalar::<f64>().sqrt())
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

/// `ema ← d·ema + (1 − d)·θ`, parameter by parameter (matched by [`ParamId`]), outside
/// autodiff.
pub(super) fn ema_update<M: Module>(model: &M, ema: M, decay: f64) -> M {
    /// The model's float parameters, flattened, without autodiff.
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().inner();
            let n = value.shape().num_elements();
            self.0.insert(param.id, value.reshape([n]));
        }
    }
    struct Update {
        theta: HashMap<ParamId, Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Update {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, ema, mapper) = param.consume();
            let ema = match self.theta.remove(&id) {
                Some(theta) => {
                    let theta = theta.reshape(ema.dims());
                    ema.mul_scalar(self.decay).add(theta.mul_scalar(1.0 - self.decay))
                }
                None => ema,
            };
            Param::from_mapped_value(id, ema, mapper)
        }
    }
    let mut collect = Collect(HashMap::new());
    model.visit(&mut collect);
    let mut update = Update { theta: collect.0, decay };
    let ema = ema.map(&mut update);
    debug_assert!(update.theta.is_empty(), "the EMA has the model's parameters");
    ema
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
