'use strict';

// A brand instead of instanceof alone, so that an error thrown with another copy of the SDK (a nested
// node_modules) is still recognised.
const KIND = Symbol.for('watchdog-sdk.errorKind');

/** The request cannot succeed as sent; do not retry. HTTP 400, gRPC INVALID_ARGUMENT, CloudEvent 400. */
class PermanentError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'PermanentError';
  }
}
Object.defineProperty(PermanentError.prototype, KIND, { value: 'permanent' });

/** A later attempt may succeed. HTTP 503, gRPC UNAVAILABLE, CloudEvent 503 (Knative retries). */
class RetryableError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'RetryableError';
  }
}
Object.defineProperty(RetryableError.prototype, KIND, { value: 'retryable' });

/** 'permanent', 'retryable' or 'internal' for anything a handler throws. */
function errorKind(err) {
  const kind = err !== null && (typeof err === 'object' || typeof err === 'function') ? err[KIND] : undefined;
  return kind === 'permanent' || kind === 'retryable' ? kind : 'internal';
}

module.exports = { PermanentError, RetryableError, errorKind };
