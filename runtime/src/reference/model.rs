//! The loss and gradients of one global batch on one device, and a training step.
//!
//! Order of work (fixed, so results are bitwise reproducible): every image through the vision
//! encoder in batch order, then every audio item through the audio encoder; every sample
//! through the language model, its loss and its backward, in batch order; every image's
//! encoder backward in batch order, then every audio item's.

use super::adam::Adam;
use super::batch::Batch;
use super::encoder::{encoder_backward, encoder_forward};
use super::llm::{cross_entropy, embed, embed_backward, llm_backward, llm_forward, Placeholders};
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
    if !cfg.is_reference() {
        return Err(RuntimeError::Unsupported(
            "the single-device reference computes only the reference model \
             (docs/reference-model.md); run other models through a program"
                .into(),
        ));
    }
    params.check(cfg)?;
    let layout = batch.layout(cfg)?;

    let encoders = cfg.encoders();
    let layouts: Vec<_> = encoders
        .iter()
        .map(|(src, _)| layout.encoder(*src))
        .collect();
    // Per encoder, per item: its output rows and cache.
    let mut enc_out: Vec<Vec<Tensor>> = Vec::with_capacity(encoders.len());
    let mut enc_cache = Vec::with_capacity(encoders.len());
    for ((src, e), l) in encoders.iter().zip(&layouts) {
        let (patches, _) = batch.encoder_inputs(*src);
        let mut outs = Vec::with_capacity(l.images.len());
        let mut caches = Vec::with_capacity(l.images.len());
        for rows in &l.images {
            let x = patches.slice_rows(rows.start, rows.end);
            let (y, c) = encoder_forward(e, src.prefix(), params, &x);
            outs.push(y);
            caches.push(c);
        }
        enc_out.push(outs);
        enc_cache.push(caches);
    }

    let mut grads = backward.then(|| Params::zeros(cfg));
    let mut d_enc: Vec<Vec<Option<Tensor>>> =
        layouts.iter().map(|l| vec![None; l.images.len()]).collect();
    let s = batch.seq_len;
    let mut total = 0.0f64;
    for b in 0..batch.batch_size {
        let tokens = &batch.tokens[b * s..(b + 1) * s];
        let targets = &batch.targets[b * s..(b + 1) * s];
        let sources: Vec<Placeholders<'_>> = encoders
            .iter()
            .zip(&layouts)
            .zip(&enc_out)
            .map(|(((src, _), l), out)| Placeholders {
                token: batch.encoder_inputs(*src).1,
                items: l.sample_images[b].clone().map(|i| &out[i]).collect(),
            })
            .collect();
        let e = embed(params, tokens, &sources);
        let (logits, cache) = llm_forward(cfg, params, &e);
        let (sum, dlogits) = cross_entropy(&logits, targets, layout.targets);
        total += sum;
        if let Some(g) = grads.as_mut() {
            let de = llm_backward(cfg, params, &cache, &dlogits, g);
            let counts: Vec<(i64, Vec<usize>)> = encoders
                .iter()
                .zip(&layouts)
                .map(|((src, _), l)| {
                    let n = l.sample_images[b]
                        .clone()
                        .map(|i| l.images[i].len())
                        .collect();
                    (batch.encoder_inputs(*src).1, n)
                })
                .collect();
            let d = embed_backward(cfg, tokens, &counts, &de, g);
            for ((l, dk), di) in layouts.iter().zip(d).zip(d_enc.iter_mut()) {
                for (i, x) in l.sample_images[b].clone().zip(dk) {
                    di[i] = Some(x);
                }
            }
        }
    }
    if let Some(g) = grads.as_mut() {
        for (((src, e), caches), ds) in encoders.iter().zip(&enc_cache).zip(&d_enc) {
            for (cache, d) in caches.iter().zip(ds) {
                let d = d.as_ref().expect("every item belongs to one sample");
                encoder_backward(e, src.prefix(), params, cache, d, g);
            }
        }
    }
    Ok((total / layout.targets as f64, grads))
}
