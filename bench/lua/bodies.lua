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

-- done(): the run's figures as one BENCH_JSON line, shared with the other wrk script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
