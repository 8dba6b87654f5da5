/// <reference types="node" />
// Types for watchdog-sdk (hand-written API types; the protobuf descriptor lib/watchdog.json is generated).

export type HeaderValue = string | number | Buffer | Uint8Array;
export type HeadersInit =
  | Record<string, HeaderValue | HeaderValue[]>
  | Map<string, HeaderValue | HeaderValue[]>
  | Iterable<[string, HeaderValue | HeaderValue[]]>;
export type Body = Buffer | Uint8Array | ArrayBuffer | string | null | undefined;

/** Lower-case header name → value (repeats joined with ", ", or "; " for cookie); get/has ignore case. */
export declare class RequestHeaders {
  [name: string]: string | ((name: string) => unknown);
  get(name: string): string | undefined;
  has(name: string): boolean;
}

export interface EventView {
  /** specversion, id, source, type and every other attribute/extension, in canonical string form. */
  readonly attributes: Record<string, string>;
  /** The event data (the request body). */
  readonly data: Buffer;
}

export declare class WatchdogRequest {
  readonly kind: 'http' | 'grpc' | 'cloudevent';
  /** HTTP method; "POST" for gRPC and CloudEvents. */
  readonly method: string;
  /** Percent-decoded path without the query (UTF-8), "/" when empty; the gRPC method for gRPC; "/" for a CloudEvent. */
  readonly path: string;
  readonly rawPath: Buffer;
  /** Raw query string, without "?". */
  readonly query: string;
  readonly host: string;
  readonly headers: RequestHeaders;
  /** [name, value] in arrival order, repeats kept, values as bytes. */
  readonly rawHeaders: Array<[string, Buffer]>;
  readonly body: Buffer;
  /** "/package.Service/Method" for gRPC, else null. */
  readonly grpcMethod: string | null;
  readonly event: EventView | null;
  readonly requestId: string;
  readonly deadline: Date | null;
  readonly trace: { traceparent: string; tracestate: string };
  /** Declared body length, -1 when unknown. */
  readonly contentLength: number;
  /** Aborted when the watchdog cancels the request or the connection ends. */
  readonly signal: AbortSignal;
  readonly streamId: number;
}

export interface ResponseInit {
  status?: number;
  headers?: HeadersInit;
  body?: Body;
  /** gRPC trailers, sent in the End frame. */
  trailers?: HeadersInit;
}

export declare class Response {
  constructor(status?: number, headers?: HeadersInit, body?: Body, trailers?: HeadersInit);
  constructor(init: ResponseInit);
  status: number;
  headers: HeadersInit;
  body: Body;
  trailers: HeadersInit;
}

export type AttributeValue = string | number | boolean | Date | Buffer | Uint8Array | null | undefined;

export declare class CloudEvent {
  /** id defaults to a fresh UUID, specversion to the request's, source to $ce_reply_source or "/fwatchdog",
   * type to $ce_reply_type or the request's type + ".reply". */
  constructor(attributes?: Record<string, AttributeValue>, data?: Body);
  attributes: Record<string, AttributeValue>;
  data: Body;
}

/** HTTP 400, gRPC INVALID_ARGUMENT: do not retry. */
export declare class PermanentError extends Error {}
/** HTTP 503, gRPC UNAVAILABLE: a later attempt may succeed. */
export declare class RetryableError extends Error {}

export type HandlerResult = Response | CloudEvent | Buffer | Uint8Array | ArrayBuffer | string | null | undefined | void;
export type Handler = (request: WatchdogRequest) => HandlerResult | Promise<HandlerResult>;

export interface ServeOptions {
  /** Requests handled at once, declared to the watchdog; 0 (default) = no limit. */
  concurrency?: number;
  /** Runs after the handshake, before Ready; if it throws, InitError and exit 1. */
  init?: () => unknown | Promise<unknown>;
  /** false: resolve with the exit code instead of calling process.exit(). Default true. */
  exit?: boolean;
  /** Default: process.env.WATCHDOG_SOCKET. */
  socketPath?: string;
}

export declare function serve(handler: Handler, options?: ServeOptions): Promise<number>;

export declare const SDK_NAME: 'watchdog-sdk-node';
export declare const version: string;
