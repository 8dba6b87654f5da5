'use strict';
// A request body still arriving: the connection pushes Data chunks in, the handler pulls them out (one reader).
// Credit goes back to the watchdog as the handler pulls (onConsumed), not as chunks arrive, so a handler that
// reads slowly holds its caller back instead of making the worker buffer the whole body.

class BodyQueue {
  /** @param {(bytes: number) => void} onConsumed called with each chunk's length as the handler takes it */
  constructor(onConsumed) {
    this.queue = [];
    this.ended = false;
    this.error = null;
    this.onConsumed = onConsumed;
    this._waiter = null;
  }

  /** A Data chunk arrived. */
  push(chunk) {
    this.queue.push(chunk);
    this._wake();
  }

  /** The request's End arrived: the reader gets what is queued, then done. */
  end() {
    this.ended = true;
    this._wake();
  }

  /** Cancelled or the connection ended: the reader's next pull rejects with `err`, even if chunks are queued. */
  fail(err) {
    if (this.error) return;
    this.error = err;
    this.queue = [];
    this._wake();
  }

  /** The next chunk, or null at the end of the body. */
  async next() {
    for (;;) {
      if (this.error) throw this.error;
      if (this.queue.length) {
        const chunk = this.queue.shift();
        this.onConsumed(chunk.length);
        return chunk;
      }
      if (this.ended) return null;
      await new Promise((resolve) => {
        this._waiter = resolve;
      });
    }
  }

  _wake() {
    const w = this._waiter;
    this._waiter = null;
    if (w) w();
  }
}

module.exports = { BodyQueue };
