#!/bin/sh
# A classic-mode function: the request body arrives on stdin, the response goes to stdout, and the request's
# method, path and headers are in Http_* environment variables.
name=$(cat)
echo "Hello, ${name:-world}! (${Http_Method} ${Http_Path})"
