-- Closed-loop load for wrk with binary request bodies read from files (an image, a multipart
-- upload), which the template script cannot carry as command-line text.
-- Arguments (after "--"): method, path, content type, then one or more body files; the
-- requests cycle through the bodies. done() prints one line "BENCH_JSON {...}" as bench.lua.

local bodies = {}
local method, path, content_type = "POST", "/", "application/octet-stream"
local counter = 0
local threads = 0

function init(args)
  method = args[1]
  path = args[2]
  content_type = args[3]
  for i = 4, #args do
    local f = assert(io.open(args[i], "rb"))
    table.insert(bodies, f:read("*a"))
    f:close()
  end
  assert(#bodies > 0, "no body files given")
  wrk.headers["Content-Type"] = content_type
  counter = id * 7  -- threads start at different bodies
end

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  return wrk.format(method, path, nil, bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  local parts = {
    string.format('"duration_us": %d', summary.duration),
    string.format('"requests": %d', summary.requests),
    string.format('"bytes": %d', summary.bytes),
    string.format('"errors_connect": %d', e.connect),
    string.format('"errors_read": %d', e.read),
    string.format('"errors_write": %d', e.write),
    string.format('"errors_status": %d', e.status),
    string.format('"errors_timeout": %d', e.timeout),
    string.format('"latency_mean_us": %.1f', latency.mean),
    string.format('"latency_max_us": %d', latency.max),
  }
  for _, p in ipairs({50, 90, 99}) do
    table.insert(parts, string.format('"p%d_us": %d', p, latency:percentile(p)))
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ", ") .. "}\n")
end
