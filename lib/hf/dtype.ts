/**
 * Host-side conversions between f32 and the 16-bit storage formats (bf16, IEEE f16), bit-exact
 * with the native `convert` op (round to nearest even, NaN kept NaN). Used where that op cannot
 * run (it is CPU-only: a CUDA engine converts checkpoint tensors on the host).
 */

/** bf16 bit patterns -> f32 (exact). */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return new Float32Array(out.buffer);
}

/** f32 -> bf16 bit patterns, round to nearest even; NaN stays a quiet NaN. */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const u = bits[i]!;
    if ((u & 0x7fffffff) > 0x7f800000) out[i] = (u >>> 16) | 0x0040;
    else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** IEEE half bit patterns -> f32 (exact, subnormals included). */
export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i]!;
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const man = h & 0x3ff;
    if (exp === 0) out[i] = sign * man * 2 ** -24;
    else if (exp === 31) out[i] = man ? NaN : sign * Infinity;
    else out[i] = sign * (1 + man / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** f32 -> IEEE half bit patterns, round to nearest even; overflow gives ±Inf, NaN stays NaN. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const u = bits[i]!;
    const sign = (u >>> 16) & 0x8000;
    const exp = (u >>> 23) & 0xff;
    let man = u & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (man ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      // Subnormal half (or zero): shift the full significand into place, then round.
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      man |= 0x800000;
      const shift = 14 - e; // 13 + (1 - e)
      const half = man >>> shift;
      const rem = man & ((1 << shift) - 1);
      const mid = 1 << (shift - 1);
      out[i] = sign | (half + (rem > mid || (rem === mid && half & 1) ? 1 : 0));
      continue;
    }
    const rem = man & 0x1fff;
    let h = (e << 10) | (man >>> 13);
    if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry into the exponent is correct (may reach Inf)
    out[i] = sign | h;
  }
  return out;
}
