-- Closed-loop load for wrk: every request gets a fresh seed, so no cache can answer it.
-- Arguments (after "--"): method, path template, body template ("" for none), classes, seed base.
-- Templates may hold {seed} and {label}; label = seed mod classes (0 when classes is 0).
-- done() prints one line "BENCH_JSON {...}" with counts, errors and latency percentiles in us.

local threads = {}
local counter = 0
local method, path_t, body_t, classes, base = "GET", "/", "", 0, 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  method = args[1] or "GET"
  path_t = args[2] or "/"
  body_t = args[3] or ""
  classes = tonumber(args[4] or "0")
  base = tonumber(args[5] or "0") + id * 100000000
  wrk.headers["Content-Type"] = "application/json"
end

local function fill(template, seed, label)
  local out = template:gsub("{seed}", tostring(seed))
  out = out:gsub("{label}", tostring(label))
  return out
end

function request()
  counter = counter + 1
  local seed = base + counter
  local label = 0
  if classes > 0 then label = seed % classes end
  local body = nil
  if body_t ~= "" then body = fill(body_t, seed, label) end
  return wrk.format(method, fill(path_t, seed, label), nil, body)
end

-- done(): the run's figures as one BENCH_JSON line, shared with the other wrk script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
