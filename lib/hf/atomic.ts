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
 * `keep(name)` selects entries of an existing `dir` to carry over into the new one (e.g. a
 * tokenizer or training checkpoints saved beside the weights); they are moved, not copied, so
 * keeping large folders costs nothing, and moved back if the swap fails.
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
  const moved: string[] = [];
  try {
    await fill(tmp);
    const existing = await fsp.readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (existing) {
      old = tempSibling(dir, 'old');
      await fsp.rename(dir, old);
      for (const name of existing) {
        if (!keep(name)) continue;
        if (await fsp.stat(join(tmp, name)).then(() => true, () => false)) continue; // the new save wins
        await fsp.rename(join(old, name), join(tmp, name));
        moved.push(name);
      }
    }
    await fsp.rename(tmp, dir);
  } catch (err) {
    if (old) {
      for (const name of moved) await fsp.rename(join(tmp, name), join(old, name)).catch(() => undefined);
      await fsp.rename(old, dir).catch(() => undefined);
    }
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
  await syncDir(dirname(dir));
  if (old) await fsp.rm(old, { recursive: true, force: true });
}
