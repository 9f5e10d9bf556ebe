/**
 * A small seeded PRNG for data shuffling: xoshiro128** (Blackman & Vigna, 2018), seeded with
 * splitmix32. Only 32-bit integer math (`Math.imul`, `>>>`), no BigInt, so it is fast and gives
 * the same sequence on every platform and Node version.
 *
 * Why not Math.random: it cannot be seeded, and exact resume needs the same permutation again.
 * Why keyed permutations: the order of epoch `e` is a pure function of `(seed, e)`
 * ({@link permutation}), so a data position `{epoch, index}` is the whole shuffling state and
 * nothing else has to be checkpointed.
 */

/** splitmix32: one step of a 32-bit counter-hash; used to expand a seed into xoshiro state. */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) >>> 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

const rotl = (x: number, k: number): number => ((x << k) | (x >>> (32 - k))) >>> 0;

/** The serialisable state of a {@link Xoshiro128}: four unsigned 32-bit words. */
export type PrngState = [number, number, number, number];

/** xoshiro128**: period 2^128 − 1, passes BigCrush; 32-bit outputs. */
export class Xoshiro128 {
  private s: PrngState;

  /**
   * Seeds from up to a few unsigned 32-bit keys (e.g. `[seed, epoch]`): each key is folded into a
   * splitmix32 stream, whose next four outputs become the state (never all zero).
   */
  constructor(...keys: number[]) {
    const sm = { s: 0x6a09e667 };
    for (const k of keys) sm.s = (splitmix32(sm) ^ (k >>> 0)) >>> 0;
    this.s = [splitmix32(sm), splitmix32(sm), splitmix32(sm), splitmix32(sm)];
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  /** A generator continuing from a saved {@link state}. */
  static fromState(state: PrngState): Xoshiro128 {
    const r = new Xoshiro128();
    r.s = [state[0] >>> 0, state[1] >>> 0, state[2] >>> 0, state[3] >>> 0];
    return r;
  }

  /** A copy of the state (JSON-serialisable). */
  get state(): PrngState {
    return [...this.s];
  }

  /** The next unsigned 32-bit integer. */
  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] = (s[2] ^ s[0]) >>> 0;
    s[3] = (s[3] ^ s[1]) >>> 0;
    s[1] = (s[1] ^ s[2]) >>> 0;
    s[0] = (s[0] ^ s[3]) >>> 0;
    s[2] = (s[2] ^ t) >>> 0;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** A uniform float in [0, 1) with 32 random bits. */
  nextFloat(): number {
    return this.nextUint32() / 4294967296;
  }

  /** A uniform integer in [0, n), n ≤ 2^32, without modulo bias (rejection sampling). */
  below(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 4294967296) throw new RangeError(`below(n): n must be an integer in [1, 2^32] (got ${n})`);
    // Accept only draws under the largest multiple of n that fits in 2^32.
    const limit = 4294967296 - (4294967296 % n);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return x % n;
    }
  }
}

/** Shuffles `a` in place (Fisher–Yates, uniform over all orders) and returns it. */
export function shuffleInPlace<T extends { length: number; [i: number]: unknown }>(a: T, rng: Xoshiro128): T {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const tmp = a[i];
    a[i] = a[j];
    a[j] = tmp;
  }
  return a;
}

/**
 * The order in which epoch `epoch` visits rows `0..n-1` with shuffling seed `seed`: a pure
 * function of its arguments (keyed by `[seed, epoch]`), so resuming at `{epoch, index}` needs no
 * saved generator state.
 */
export function permutation(n: number, seed: number, epoch: number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  return shuffleInPlace(p, new Xoshiro128(seed >>> 0, Math.floor(seed / 4294967296) >>> 0, epoch >>> 0));
}
