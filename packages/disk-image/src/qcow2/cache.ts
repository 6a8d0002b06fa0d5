/**
 * A cache of one-cluster metadata tables (L2 tables, refcount blocks), keyed
 * by their host offset. Tables are kept as the raw big-endian bytes; a dirty
 * table remembers the byte range that changed so write-back writes only that.
 * Eviction is least-recently-used; the owner writes dirty tables back first.
 */
export interface Table {
  readonly offset: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Changed byte range [dirtyLo, dirtyHi); dirtyHi === 0 when clean. */
  dirtyLo: number;
  dirtyHi: number;
  lastUse: number;
}

export class TableCache {
  private readonly tables = new Map<number, Table>();
  readonly dirty = new Set<Table>();
  private clock = 0;

  constructor(
    readonly tableSize: number,
    readonly capacity: number,
  ) {}

  get size(): number {
    return this.tables.size;
  }

  get(offset: number): Table | undefined {
    const t = this.tables.get(offset);
    if (t) t.lastUse = ++this.clock;
    return t;
  }

  /** Adds a table (the caller has made room with {@link victim} first). */
  add(offset: number, bytes: Uint8Array): Table {
    const t: Table = {
      offset,
      bytes,
      view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      dirtyLo: 0,
      dirtyHi: 0,
      lastUse: ++this.clock,
    };
    this.tables.set(offset, t);
    return t;
  }

  markDirty(t: Table, lo: number, hi: number): void {
    if (t.dirtyHi === 0) {
      t.dirtyLo = lo;
      t.dirtyHi = hi;
      this.dirty.add(t);
    } else {
      if (lo < t.dirtyLo) t.dirtyLo = lo;
      if (hi > t.dirtyHi) t.dirtyHi = hi;
    }
  }

  markClean(t: Table): void {
    t.dirtyLo = 0;
    t.dirtyHi = 0;
    this.dirty.delete(t);
  }

  /** The least recently used table when the cache is full, else undefined. */
  victim(): Table | undefined {
    if (this.tables.size < this.capacity) return undefined;
    let best: Table | undefined;
    for (const t of this.tables.values()) if (!best || t.lastUse < best.lastUse) best = t;
    return best;
  }

  evict(t: Table): void {
    this.tables.delete(t.offset);
    this.dirty.delete(t);
  }

  /** Drops the table at `offset`, if cached (its cluster was freed). */
  forget(offset: number): void {
    const t = this.tables.get(offset);
    if (t) this.evict(t);
  }

  clear(): void {
    this.tables.clear();
    this.dirty.clear();
  }
}
