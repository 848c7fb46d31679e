//! Weights, gradients, batches and losses as safetensors bytes, with the documented names
//! (`docs/reference-model.md`): parameters by their names, gradients with the prefix `grad.`,
//! losses as `loss` f32 [steps]. Tensors are whole (as one device holds them), whatever plan
//! produced them. Bytes in, bytes out: callers do the file IO (atomically).

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::tensor::Tensor;
use crate::RuntimeError;

fn err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Safetensors(e.to_string())
}

/// Serializes named f32 tensors (names sorted: deterministic bytes).
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (String, &'a Tensor)>,
) -> Result<Vec<u8>, RuntimeError> {
    let owned: BTreeMap<String, (Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let bytes: Vec<u8> = t.data().iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, (t.shape().to_vec(), bytes))
        })
        .collect();
    let views = owned
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    safetensors::tensor::serialize(views, None).map_err(err)
}

/// Reads every tensor of a safetensors buffer; every tensor must be f32.
pub fn from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    let st = SafeTensors::deserialize(bytes).map_err(err)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(RuntimeError::Safetensors(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name.clone(), Tensor::from_vec(view.shape(), data)?);
    }
    Ok(out)
}

/// The losses of a run as `loss` f32 [steps].
pub fn losses_to_bytes(losses: &[f32]) -> Result<Vec<u8>, RuntimeError> {
    let t = Tensor::from_vec(&[losses.len()], losses.to_vec())?;
    to_bytes([("loss".to_string(), &t)])
}
