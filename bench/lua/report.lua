-- wrk's done() hook for the bench scripts: counts, errors, mean, max and the p50/p90/p99
-- latencies as one line, "BENCH_JSON {...}", which bench/loadgen.py parses.

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
