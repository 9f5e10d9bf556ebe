/**
 * Atomic writes: build the result under a temporary sibling name, then rename it into place,
 * so a crash or an error never leaves a half-written file or folder at the target path.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';

let counter = 0;

/** A fresh sibling name for `path`: `<path>.<tag>-<pid>-<n>`. */
export function tempSibling(path: string, tag = 'tmp'): string {
  return join(dirname(path), `${basename(path)}.${tag}-${process.pid}-${counter++}`);
}

/** Flushes a folder's entries (a rename is durable once its folder is synced); best effort. */
async function syncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, 'r');
    await fh.sync();
  } catch {
    // Some filesystems refuse fsync on folders; the rename itself is still atomic.
  } finally {
    await fh?.close();
  }
}

/** Runs `write(tmp)` to create a file at a temporary path, then renames it to `path`. */
export async function atomicTarget(path: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = tempSibling(path);
  try {
    await write(tmp);
    await fsp.rename(tmp, path);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dirname(path));
}

/**
 * Creates the folder `dir` atomically: `fill(tmpDir)` writes into a fresh temporary sibling
 * folder, which then replaces `dir` (an existing `dir` is moved aside first and removed after).
 * `keep(name)` selects files of an existing `dir` to carry over into the new one (e.g. a
 * tokenizer saved beside the weights); they are copied before the swap.
 */
export async function atomicDir(
  dir: string,
  fill: (tmpDir: string) => Promise<void>,
  keep: (name: string) => boolean = () => false,
): Promise<void> {
  await fsp.mkdir(dirname(dir), { recursive: true });
  const tmp = tempSibling(dir);
  await fsp.mkdir(tmp);
  let old: string | undefined;
  try {
    await fill(tmp);
    const existing = await fsp.readdir(dir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (existing) {
      for (const e of existing) {
        if (!keep(e.name)) continue;
        const to = join(tmp, e.name);
        if (await fsp.stat(to).then(() => true, () => false)) continue; // the new save wins
        await fsp.cp(join(dir, e.name), to, { recursive: true });
      }
      old = tempSibling(dir, 'old');
      await fsp.rename(dir, old);
    }
    await fsp.rename(tmp, dir);
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    if (old) await fsp.rename(old, dir).catch(() => undefined);
    throw err;
  }
  await syncDir(dirname(dir));
  if (old) await fsp.rm(old, { recursive: true, force: true });
}
