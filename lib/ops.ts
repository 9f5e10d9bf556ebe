/**
 * The native kernels as typed async functions: `engine.ops.layerNormForward({...})`.
 *
 * Names follow the native ops (`layernorm_forward` -> `layerNormForward`); arguments keep the
 * kernels' names and shape symbols (N rows, with any leading dimensions flattened; C channels;
 * V vocabulary; B batch; T time; H heads; Hkv key/value heads; d head size). Float tensors are
 * all f32 or all f64 in one call (f64 exists for gradient checks).
 *
 * Backward ops follow llm.c's convention: gradient tensors are passed in and accumulated into
 * (+=), so zero them first (`zero`) and reuse them across micro-batches; they are returned as
 * the same objects.
 */
import type { Engine } from './engine.js';
import type { Tensor } from './tensor.js';

type T = Tensor;
type Attr = number | boolean | string | undefined;

/** `'out_in'`: torch Linear, weight (N, K). `'in_out'`: GPT-2 Conv1D, weight (K, N). */
export type WeightLayout = 'out_in' | 'in_out';

export class Ops {
  constructor(private readonly engine: Engine) {}

  private call<O>(op: string, tensors: Record<string, T | undefined>, attrs: Record<string, Attr> = {}): Promise<O> {
    return this.engine.run(op, tensors, attrs) as Promise<O>;
  }

  // ---- tensors ----------------------------------------------------------------------------

  /** c (M, N) = alpha·op(a)·op(b) + beta·c; without `c` a new output (beta ignored). */
  gemm(a: { a: T; b: T; c?: T; transA?: boolean; transB?: boolean; alpha?: number; beta?: number }): Promise<{ c: T }> {
    return this.call('gemm', { a: a.a, b: a.b, c: a.c }, { transA: a.transA, transB: a.transB, alpha: a.alpha, beta: a.beta });
  }
  /** Batched gemm over the first dimension: a (Bt, M, K), b (Bt, K, N) -> c (Bt, M, N). */
  gemmBatched(a: { a: T; b: T; c?: T; transA?: boolean; transB?: boolean; alpha?: number; beta?: number }): Promise<{ c: T }> {
    return this.call('gemm_batched', { a: a.a, b: a.b, c: a.c }, { transA: a.transA, transB: a.transB, alpha: a.alpha, beta: a.beta });
  }
  /** y = x as another dtype (f32, f64, bf16 round-to-nearest-even, f16). */
  convert(a: { x: T; dtype: 'f32' | 'f64' | 'bf16' | 'f16' }): Promise<{ y: T }> {
    return this.call('convert', { x: a.x }, { dtype: a.dtype });
  }
  /** x = 0 in place. */
  zero(a: { x: T }): Promise<{ x: T }> {
    return this.call('zero', { x: a.x });
  }
  /** dst = src in place. */
  copy(a: { src: T; dst: T }): Promise<{ dst: T }> {
    return this.call('copy', { src: a.src, dst: a.dst });
  }

  // ---- layers -----------------------------------------------------------------------------

  /** out (M, N) = inp (M, K) · W + bias. */
  linearForward(a: { inp: T; weight: T; bias?: T; layout?: WeightLayout }): Promise<{ out: T }> {
    return this.call('linear_forward', { inp: a.inp, weight: a.weight, bias: a.bias }, { layout: a.layout });
  }
  linearBackward(a: { dout: T; inp: T; weight: T; dinp?: T; dweight?: T; dbias?: T; layout?: WeightLayout }): Promise<{ dinp?: T; dweight?: T; dbias?: T }> {
    return this.call('linear_backward', { dout: a.dout, inp: a.inp, weight: a.weight, dinp: a.dinp, dweight: a.dweight, dbias: a.dbias }, { layout: a.layout });
  }
  /** out (N, C) = table[ids] with ids (N) i32, table (V, C). */
  embeddingForward(a: { ids: T; table: T }): Promise<{ out: T }> {
    return this.call('embedding_forward', { ids: a.ids, table: a.table });
  }
  embeddingBackward(a: { dout: T; ids: T; dtable: T }): Promise<{ dtable: T }> {
    return this.call('embedding_backward', { dout: a.dout, ids: a.ids, dtable: a.dtable });
  }
  /** out = inp + wpe[pos] (GPT-2 learned positions), pos (N) i32, wpe (P, C). */
  positionEmbeddingForward(a: { inp: T; pos: T; wpe: T }): Promise<{ out: T }> {
    return this.call('position_embedding_forward', { inp: a.inp, pos: a.pos, wpe: a.wpe });
  }
  positionEmbeddingBackward(a: { dout: T; pos: T; dwpe: T }): Promise<{ dwpe: T }> {
    return this.call('position_embedding_backward', { dout: a.dout, pos: a.pos, dwpe: a.dwpe });
  }
  /** LayerNorm over the last dim; eps default 1e-5. */
  layerNormForward(a: { inp: T; weight: T; bias?: T; eps?: number }): Promise<{ out: T; mean: T; rstd: T }> {
    return this.call('layernorm_forward', { inp: a.inp, weight: a.weight, bias: a.bias }, { eps: a.eps });
  }
  layerNormBackward(a: { dout: T; inp: T; weight: T; mean: T; rstd: T; dinp?: T; dweight?: T; dbias?: T }): Promise<{ dinp?: T; dweight?: T; dbias?: T }> {
    return this.call('layernorm_backward', { ...a });
  }
  /** RMSNorm over the last dim; eps default 1e-6. */
  rmsNormForward(a: { inp: T; weight: T; eps?: number }): Promise<{ out: T; rstd: T }> {
    return this.call('rmsnorm_forward', { inp: a.inp, weight: a.weight }, { eps: a.eps });
  }
  rmsNormBackward(a: { dout: T; inp: T; weight: T; rstd: T; dinp?: T; dweight?: T }): Promise<{ dinp?: T; dweight?: T }> {
    return this.call('rmsnorm_backward', { ...a });
  }
  /** Rotary embedding (HF rotate-half) of inp (N, H, d) at positions pos (N) i32; theta default 10000. */
  ropeForward(a: { inp: T; pos: T; theta?: number }): Promise<{ out: T }> {
    return this.call('rope_forward', { inp: a.inp, pos: a.pos }, { theta: a.theta });
  }
  ropeBackward(a: { dout: T; pos: T; dinp: T; theta?: number }): Promise<{ dinp: T }> {
    return this.call('rope_backward', { dout: a.dout, pos: a.pos, dinp: a.dinp }, { theta: a.theta });
  }
  /** GELU, tanh form (GPT-2). */
  geluForward(a: { inp: T }): Promise<{ out: T }> {
    return this.call('gelu_forward', { inp: a.inp });
  }
  geluBackward(a: { inp: T; dout: T; dinp: T }): Promise<{ dinp: T }> {
    return this.call('gelu_backward', { ...a });
  }
  siluForward(a: { inp: T }): Promise<{ out: T }> {
    return this.call('silu_forward', { inp: a.inp });
  }
  siluBackward(a: { inp: T; dout: T; dinp: T }): Promise<{ dinp: T }> {
    return this.call('silu_backward', { ...a });
  }
  /** ReLU, max(x, 0) (Quiet-STaR's mixing head); the gradient is 0 at x <= 0, like torch. */
  reluForward(a: { inp: T }): Promise<{ out: T }> {
    return this.call('relu_forward', { inp: a.inp });
  }
  reluBackward(a: { inp: T; dout: T; dinp: T }): Promise<{ dinp: T }> {
    return this.call('relu_backward', { ...a });
  }
  /** out = silu(gate) * up (Llama MLP). */
  swiGluForward(a: { gate: T; up: T }): Promise<{ out: T }> {
    return this.call('swiglu_forward', { gate: a.gate, up: a.up });
  }
  swiGluBackward(a: { gate: T; up: T; dout: T; dgate: T; dup: T }): Promise<{ dgate: T; dup: T }> {
    return this.call('swiglu_backward', { ...a });
  }
  /** out = a + b (runs on CUDA too). */
  residualForward(a: { a: T; b: T }): Promise<{ out: T }> {
    return this.call('residual_forward', { a: a.a, b: a.b });
  }
  residualBackward(a: { dout: T; da?: T; db?: T }): Promise<{ da?: T; db?: T }> {
    return this.call('residual_backward', { ...a });
  }
  /**
   * Causal attention with GQA: q (B, Tq, H, d), k/v (B, Tk, Hkv, d); optional positions
   * qPos (B, Tq), kPos (B, Tk) i32 (default: keys 0..Tk-1, queries the last Tq), key validity
   * kValid (B, Tk) u8, sliding `window`, `scale` (default 1/sqrt(d)). lse is (B, H, Tq) f32.
   */
  attentionForward(a: { q: T; k: T; v: T; qPos?: T; kPos?: T; kValid?: T; window?: number; scale?: number }): Promise<{ out: T; lse: T }> {
    return this.call('attention_forward', { q: a.q, k: a.k, v: a.v, qPos: a.qPos, kPos: a.kPos, kValid: a.kValid }, { window: a.window, scale: a.scale });
  }
  attentionBackward(a: {
    dout: T; q: T; k: T; v: T; out: T; lse: T; qPos?: T; kPos?: T; kValid?: T; dq?: T; dk?: T; dv?: T; window?: number; scale?: number;
  }): Promise<{ dq: T; dk: T; dv: T }> {
    const { window, scale, ...tensors } = a;
    return this.call('attention_backward', tensors, { window, scale });
  }
  /**
   * Quiet-STaR's masked parallel thought attention (spec §2.5): chain query (row r, step s,
   * position i) sees the valid base keys j <= i of its document b = r / P (sliding `window`
   * checked against i) and its own chain keys at column i for steps 1..s, never another
   * position's thought. qChain (R, Sq, T, H, d) holds query steps sFirst..sFirst+Sq-1;
   * kBase/vBase (B, T, Hkv, d) are shared by the P = R / B rows of a document; kChain/vChain
   * (R, Sk, T, Hkv, d) hold chain steps 1..Sk (sFirst + Sq - 1 <= Sk); valid (B, T) u8.
   * Packed mode (training): sFirst 1, Sq = Sk = S; incremental mode (sampling): Sq = 1,
   * sFirst = s. RoPE is applied by the caller. lse (R, Sq, T, H) f32. `sFirst` @defaultValue 1,
   * `window` @defaultValue 0 (none), `scale` @defaultValue 1/sqrt(d). CPU only for now.
   */
  thoughtAttentionForward(a: {
    qChain: T; kBase: T; vBase: T; kChain: T; vChain: T; valid?: T; sFirst?: number; window?: number; scale?: number;
  }): Promise<{ out: T; lse: T }> {
    const { sFirst, window, scale, ...tensors } = a;
    return this.call('thought_attention_forward', tensors, { sFirst, window, scale });
  }
  /** Gradients (+=) of thoughtAttentionForward; base K/V gradients are summed over the P rows of each document. */
  thoughtAttentionBackward(a: {
    dout: T; qChain: T; kBase: T; vBase: T; kChain: T; vChain: T; out: T; lse: T; valid?: T;
    dqChain?: T; dkBase?: T; dvBase?: T; dkChain?: T; dvChain?: T; sFirst?: number; window?: number; scale?: number;
  }): Promise<{ dqChain: T; dkBase: T; dvBase: T; dkChain: T; dvChain: T }> {
    const { sFirst, window, scale, ...tensors } = a;
    return this.call('thought_attention_backward', tensors, { sFirst, window, scale });
  }
  /**
   * LM head + softmax cross-entropy without materialising logits: h (N, C), weight (V, C),
   * targets (N) i32 (ignoreIndex, default -100, gives loss 0). losses (N), lse (N) f32.
   */
  lmHeadXentForward(a: { h: T; weight: T; targets: T; ignoreIndex?: number; chunk?: number }): Promise<{ losses: T; lse: T }> {
    return this.call('lmhead_xent_forward', { h: a.h, weight: a.weight, targets: a.targets }, { ignoreIndex: a.ignoreIndex, chunk: a.chunk });
  }
  lmHeadXentBackward(a: {
    dlosses: T; h: T; weight: T; targets: T; lse: T; dh?: T; dweight?: T; ignoreIndex?: number; chunk?: number;
  }): Promise<{ dh?: T; dweight?: T }> {
    const { ignoreIndex, chunk, ...tensors } = a;
    return this.call('lmhead_xent_backward', tensors, { ignoreIndex, chunk });
  }

  // ---- sampling ---------------------------------------------------------------------------

  /**
   * Next-token ids (B) i32 from logits (B, V) f32|f64. `temperature` 0 is greedy (first
   * argmax); otherwise Hugging Face's order: logits / temperature, top-k (0 = off), top-p
   * (1 = off), then a Gumbel-max draw with noise keyed by (seed, row, step, position), so each
   * row's draw is independent of the rest of the batch and of the thread count. `rows` (B) i32
   * gives each batch row its stream id (default 0..B-1), `positions` (B) i32 its position
   * (default 0); ids in `suppress` (S) i32 are never drawn. CPU only for now.
   */
  sampleTokens(a: {
    logits: T; rows?: T; positions?: T; suppress?: T; temperature?: number; topK?: number; topP?: number; seed?: number; step?: number;
  }): Promise<{ ids: T }> {
    const { logits, rows, positions, suppress, ...attrs } = a;
    return this.call('sample_tokens', { logits, rows, positions, suppress }, attrs);
  }

  /**
   * Quiet-STaR thought tokens: the LM head fused with a Gumbel-max draw, without materialising
   * the (N, V) logits. h (N, D), weight (V, D) f32|f64; logits z = h · weightᵀ. Each row draws
   * tokens[n] = argmax_v z[v] / temperature + gumbel(seed, rows[n], step, positions[n], v) over
   * the ids not in `suppress` (the thought markers), i.e. exactly what `sampleTokens` draws from
   * the same logits (temperature 0 = greedy). logp (N) f32 = log_softmax(z / policyTemperature)
   * at the token, lse (N) f32 = logsumexp(z), both over the unsuppressed ids. `temperature`
   * @defaultValue 1, `policyTemperature` @defaultValue 3, `chunk` (vocabulary columns per pass,
   * 0 = 4096). CPU only for now.
   */
  thoughtSample(a: {
    h: T; weight: T; rows?: T; positions?: T; suppress?: T; temperature?: number; policyTemperature?: number; seed?: number; step?: number; chunk?: number;
  }): Promise<{ tokens: T; logp: T; lse: T }> {
    const { h, weight, rows, positions, suppress, ...attrs } = a;
    return this.call('thought_sample', { h, weight, rows, positions, suppress }, attrs);
  }

  // ---- optimisation -----------------------------------------------------------------------

  /** One AdamW update (torch semantics) of flat params/grads/m/v; step is 1-based. */
  adamwUpdate(a: { params: T; grads: T; m: T; v: T; lr: number; step: number; beta1?: number; beta2?: number; eps?: number; weightDecay?: number }): Promise<{ params: T; m: T; v: T }> {
    const { params, grads, m, v, ...attrs } = a;
    return this.call('adamw_update', { params, grads, m, v }, attrs);
  }
  /** L2 norm of x as an f64 [1] tensor. */
  globalNorm(a: { x: T }): Promise<{ norm: T }> {
    return this.call('global_norm', { x: a.x });
  }
  /** Scales grads to norm <= maxNorm (torch clip_grad_norm_); returns the norm before. */
  clipGradNorm(a: { grads: T; maxNorm: number }): Promise<{ grads: T; norm: T }> {
    return this.call('clip_grad_norm', { grads: a.grads }, { maxNorm: a.maxNorm });
  }
}
