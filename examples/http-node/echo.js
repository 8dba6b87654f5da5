// An echo function for ng-watchdog's http mode (see sdk/node/README.md):
//   npm ci --prefix sdk/node && fprocess="node examples/http-node/echo.js" mode=http target/release/fwatchdog
const { serve, Response } = require('../../sdk/node');

serve(async (request) => {
  const type = request.headers.get('content-type') || 'application/octet-stream';
  return new Response(200, { 'content-type': type }, request.body);
});
