/// <reference types="node" />
// Types for watchdog-sdk (hand-written API types; the protobuf descriptor lib/watchdog.json is generated).

export type HeaderValue = string | number | Buffer | Uint8Array;
export type HeadersInit =
  | Record<string, HeaderValue | HeaderValue[]>
  | Map<string, HeaderValue | HeaderValue[]>
  | Iterable<[string, HeaderValue | HeaderValue[]]>;
export type Body = Buffer | Uint8Array | ArrayBuffer | string | null | undefined;
export type Chunk = Buffer | Uint8Array | ArrayBuffer | string;
/** Chunks sent as they are produced; for a server-streaming gRPC passthrough call each chunk is one message. */
export type ChunkStream = AsyncIterable<Chunk> | Iterable<Chunk | Promise<Chunk>>;

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

export interface GrpcCallInfo {
  /** "/package.Service/Method". */
  readonly method: string;
  /** The client sends a stream of messages (a passthrough call's body is then in gRPC's 5-byte framing). */
  readonly clientStreaming: boolean;
  /** The client expects a stream of messages (the SDK frames each chunk the handler produces). */
  readonly serverStreaming: boolean;
}

/** The HTTP request that carried a gRPC call or CloudEvent. */
export interface TransportInfo {
  readonly method: string;
  readonly path: string;
  readonly rawPath: Buffer;
  readonly query: string;
  readonly host: string;
  readonly version: string;
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
  /** gRPC metadata: the same object as `headers`. */
  readonly metadata: RequestHeaders;
  /** [name, value] in arrival order, repeats kept, values as bytes. */
  readonly rawHeaders: Array<[string, Buffer]>;
  /**
   * The whole body. For a client-streaming gRPC call (the handler starts before the body has arrived) reading it
   * early throws: use messages(), stream() or `await bytes()`.
   */
  readonly body: Buffer;
  /** "/package.Service/Method" for gRPC, else null. */
  readonly grpcMethod: string | null;
  /** The gRPC call's method and streaming flags, else null. */
  readonly grpc: GrpcCallInfo | null;
  /** The HTTP request that carried a gRPC call or CloudEvent, else null. */
  readonly transport: TransportInfo | null;
  readonly event: EventView | null;
  readonly requestId: string;
  readonly deadline: Date | null;
  readonly trace: { traceparent: string; tracestate: string };
  /** Declared body length, -1 when unknown. */
  readonly contentLength: number;
  /** Aborted when the watchdog cancels the request or the connection ends. */
  readonly signal: AbortSignal;
  readonly streamId: number;
  /**
   * gRPC request messages: a client-streaming passthrough body split on the 5-byte framing (a truncated frame
   * throws PermanentError), otherwise [body]. Needs the whole body.
   */
  grpcMessages(): Buffer[];
  /** gRPC request messages as they arrive (client-streaming: each as soon as it is complete). Reads the body once. */
  messages(): AsyncIterableIterator<Buffer>;
  /** The body's chunks as they arrive; credit is returned to the caller as you read. Reads the body once. */
  stream(): AsyncIterableIterator<Buffer>;
  /** The whole body, once it has arrived. */
  bytes(): Promise<Buffer>;
}

export interface ResponseInit {
  status?: number;
  /** Response headers; gRPC initial metadata. */
  headers?: HeadersInit;
  /** Bytes, or chunks sent as they are produced. */
  body?: Body | ChunkStream;
  /** gRPC trailing metadata, sent in the End frame. */
  trailers?: HeadersInit;
}

export declare class Response {
  constructor(status?: number, headers?: HeadersInit, body?: Body | ChunkStream, trailers?: HeadersInit);
  constructor(init: ResponseInit);
  status: number;
  headers: HeadersInit;
  body: Body | ChunkStream;
  trailers: HeadersInit;
}

/** gRPC status codes. */
export declare const StatusCode: Readonly<{
  OK: 0;
  CANCELLED: 1;
  UNKNOWN: 2;
  INVALID_ARGUMENT: 3;
  DEADLINE_EXCEEDED: 4;
  NOT_FOUND: 5;
  ALREADY_EXISTS: 6;
  PERMISSION_DENIED: 7;
  RESOURCE_EXHAUSTED: 8;
  FAILED_PRECONDITION: 9;
  ABORTED: 10;
  OUT_OF_RANGE: 11;
  UNIMPLEMENTED: 12;
  INTERNAL: 13;
  UNAVAILABLE: 14;
  DATA_LOSS: 15;
  UNAUTHENTICATED: 16;
}>;
export type StatusCodeName = keyof typeof StatusCode;

/**
 * A gRPC status, returned or thrown: trailers grpc-status / grpc-message (+ `trailers`) for a gRPC call, also
 * after streamed messages; the matching HTTP status with the message as body for HTTP and CloudEvents.
 */
export declare class GrpcStatus extends Error {
  constructor(code: number | StatusCodeName, message?: string, trailers?: HeadersInit);
  readonly code: number;
  /** "NOT_FOUND", …, or the number for a code gRPC does not define. */
  readonly codeName: string;
  trailers: HeadersInit;
}

/** One message in gRPC's length-prefixed framing (flag 0, 4-byte big-endian length, the bytes). */
export declare function grpcFrame(message: Buffer | Uint8Array | string): Buffer;
/** A body in gRPC framing → its messages; PermanentError on a truncated/malformed frame, GrpcStatus UNIMPLEMENTED if compressed. */
export declare function splitGrpcMessages(body: Buffer | Uint8Array): Buffer[];
/** Incremental form of splitGrpcMessages. */
export declare class GrpcMessageDecoder {
  /** The messages completed by this chunk. */
  push(chunk: Buffer): Buffer[];
  /** Throws PermanentError if the bytes seen end inside a message. */
  finish(): void;
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

export type HandlerResult =
  | Response
  | CloudEvent
  | GrpcStatus
  | ChunkStream
  | Buffer
  | Uint8Array
  | ArrayBuffer
  | string
  | null
  | undefined
  | void;
export type Handler =
  | ((request: WatchdogRequest) => HandlerResult | Promise<HandlerResult>)
  | ((request: WatchdogRequest) => AsyncGenerator<Chunk, void, unknown>);

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
