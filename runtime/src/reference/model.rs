//! The loss and gradients of one global batch on one device, and a training step.
//!
//! Order of work (fixed, so results are bitwise reproducible): every image through the encoder
//! in batch order; every sample through the language model, its loss and its backward, in
//! batch order; every image's encoder backward in batch order.

use super::adam::Adam;
use super::batch::Batch;
use super::encoder::{encoder_backward, encoder_forward};
use super::llm::{cross_entropy, embed, embed_backward, llm_backward, llm_forward};
use super::params::{Config, Grads, Params};
use crate::error::RuntimeError;
use crate::tensor::Tensor;

/// The batch's loss (rounded to f32) and the gradient of every parameter.
pub fn loss_and_grads(
    cfg: &Config,
    params: &Params,
    batch: &Batch,
) -> Result<(f32, Grads), RuntimeError> {
    let (loss, grads) = run(cfg, params, batch, true)?;
    Ok((loss as f32, grads.expect("backward was asked for")))
}

/// The batch's loss alone, before its final rounding to f32 (the per-target cross-entropies
/// are summed in f64): the same value [`loss_and_grads`] rounds. For finite differences.
pub fn loss(cfg: &Config, params: &Params, batch: &Batch) -> Result<f64, RuntimeError> {
    Ok(run(cfg, params, batch, false)?.0)
}

/// One Adam step on the batch; returns the loss before the step.
pub fn train_step(
    cfg: &Config,
    params: &mut Params,
    adam: &mut Adam,
    batch: &Batch,
) -> Result<f32, RuntimeError> {
    let (loss, grads) = loss_and_grads(cfg, params, batch)?;
    adam.update(params, &grads)?;
    Ok(loss)
}

fn run(
    cfg: &Config,
    params: &Params,
    batch: &Batch,
    backward: bool,
) -> Result<(f64, Option<Grads>), RuntimeError> {
    cfg.validate()?;
    params.check(cfg)?;
    let layout = batch.layout(cfg)?;

    let mut enc_out = Vec::with_capacity(layout.images.len());
    let mut enc_cache = Vec::with_capacity(layout.images.len());
    for rows in &layout.images {
        let (y, c) = encoder_forward(cfg, params, &batch.patches.slice_rows(rows.start, rows.end));
        enc_out.push(y);
        enc_cache.push(c);
    }

    let mut grads = backward.then(|| Params::zeros(cfg));
    let mut d_enc: Vec<Option<Tensor>> = vec![None; layout.images.len()];
    let s = batch.seq_len;
    let mut total = 0.0f64;
    for (b, images) in layout.sample_images.iter().enumerate() {
        let tokens = &batch.tokens[b * s..(b + 1) * s];
        let targets = &batch.targets[b * s..(b + 1) * s];
        let rows: Vec<&Tensor> = images.clone().map(|i| &enc_out[i]).collect();
        let e = embed(params, tokens, batch.image_token_id, &rows);
        let (logits, cache) = llm_forward(cfg, params, &e);
        let (sum, dlogits) = cross_entropy(&logits, targets, layout.targets);
        total += sum;
        if let Some(g) = grads.as_mut() {
            let de = llm_backward(cfg, params, &cache, &dlogits, g);
            let counts: Vec<usize> = images.clone().map(|i| layout.images[i].len()).collect();
            let d = embed_backward(cfg, tokens, batch.image_token_id, &counts, &de, g);
            for (i, di) in images.clone().zip(d) {
                d_enc[i] = Some(di);
            }
        }
    }
    if let Some(g) = grads.as_mut() {
        for (cache, d) in enc_cache.iter().zip(&d_enc) {
            let d = d.as_ref().expect("every image belongs to one sample");
            encoder_backward(cfg, params, cache, d, g);
        }
    }
    Ok((total / layout.targets as f64, grads))
}
