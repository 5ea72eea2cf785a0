-- wrk script for bench/ingest.py: posts the signed callbacks it pre-generated, one per line as
-- "path<TAB>signature header<TAB>its value<TAB>body". Each wrk thread takes its own slice of the
-- file (line n goes to thread n % threads), so no two requests of a run are the same callback
-- until a thread has sent its whole slice; then it starts its slice again and counts a wrap.
--
--   wrk -t2 -c32 -d8s -s bench/callbacks.lua http://127.0.0.1:PORT -- requests.tsv 2

local threads = {}
local created = 0

function setup(thread)
  thread:set("id", created)
  created = created + 1
  table.insert(threads, thread)
end

function init(args)
  local file, count = args[1], tonumber(args[2])
  slice = {}
  local n = 0
  for line in io.lines(file) do
    if n % count == id then
      local path, header, value, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      slice[#slice + 1] = wrk.format("POST", path,
        {[header] = value, ["Content-Type"] = "application/json"}, body)
    end
    n = n + 1
  end
  index = 0
  wraps = 0
end

function request()
  index = index + 1
  if index > #slice then
    index = 1
    wraps = wraps + 1
  end
  return slice[index]
end

function done(summary, latency, requests)
  local wrapped = 0
  for _, thread in ipairs(threads) do
    wrapped = wrapped + (thread:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "wraps": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, wrapped))
end
