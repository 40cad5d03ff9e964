-- wrk script for benchmarks/api_accept.py: POST {"content":"hello"} to
-- /v1/sessions/<prefix>-t<thread>-<n mod sessions>/turns, so turns spread over many sessions.
-- Script arguments (after "--"): <sessions per thread> <session id prefix>.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  sessions = tonumber(args[1]) or 10000
  prefix = args[2] or "wrk"
  counter = 0
  wrk.method = "POST"
  wrk.body = '{"content":"hello"}'
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local path = string.format("/v1/sessions/%s-t%d-%d/turns", prefix, tid, counter % sessions)
  return wrk.format(nil, path)
end
