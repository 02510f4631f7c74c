import assert from 'node:assert/strict';

/** The links an entry carries; it is on at most one list at a time. */
export interface ListNode<T> {
  listPrevious: T | undefined;
  listNext: T | undefined;
  /** The list it is on. */
  list: object | undefined;
}

/**
 * An insertion-ordered list threaded through its entries, for bookkeeping
 * that gains and loses entries on every request (the range order, the page
 * cache's clean and dirty orders). A Set there rebuilds its hash table every
 * few dozen changes, and each table is promoted and left to major
 * collections; a Map used as a queue also leaves deleted entries at its
 * front that every walk from the front skips until the next rebuild
 * (docs/architecture.md). Here adding, removing and moving an entry cost a
 * few pointer writes and no allocation.
 */
export class IntrusiveList<T extends ListNode<T>> {
  private head: T | undefined;
  private tail: T | undefined;
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** The entry added (or moved to the back) longest ago; walk on through `listNext`. */
  get first(): T | undefined {
    return this.head;
  }

  has(node: T): boolean {
    return node.list === this;
  }

  pushBack(node: T): void {
    assert(node.list === undefined, 'entry is already on a list');
    node.list = this;
    node.listPrevious = this.tail;
    node.listNext = undefined;
    if (this.tail === undefined) this.head = node;
    else this.tail.listNext = node;
    this.tail = node;
    this.count += 1;
  }

  /** Takes the entry off this list; false if it was not on it. */
  remove(node: T): boolean {
    if (node.list !== this) return false;
    if (node.listPrevious === undefined) this.head = node.listNext;
    else node.listPrevious.listNext = node.listNext;
    if (node.listNext === undefined) this.tail = node.listPrevious;
    else node.listNext.listPrevious = node.listPrevious;
    node.list = undefined;
    node.listPrevious = undefined;
    node.listNext = undefined;
    this.count -= 1;
    return true;
  }

  moveToBack(node: T): void {
    this.remove(node);
    this.pushBack(node);
  }

  /** Front to back. Only the entry being visited may be removed meanwhile: the walk has already read its successor. */
  *[Symbol.iterator](): IterableIterator<T> {
    for (let node = this.head; node !== undefined;) {
      const next = node.listNext;
      yield node;
      node = next;
    }
  }
}
