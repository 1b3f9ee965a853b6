-- notify.lua: wrk script for the bench: every request is a ~1 KB "generation finished"
-- notification whose creation id was never sent before; done() prints machine-readable results.
--
-- Usage: wrk -t2 -c64 -d10s --latency -s notify.lua http://127.0.0.1:PORT/hooks/vidu -- RUNID
-- RUNID (digits) makes ids unique across runs; each thread adds its own number and a counter,
-- so ids grow over time within a thread, as Vidu's do.

local threads = {}
local next_tid = 0

function setup(thread)
        next_tid = next_tid + 1
        thread:set("tid", next_tid)
        table.insert(threads, thread)
end

local runid
local counter = 0
local headers = { ["Content-Type"] = "application/json" }
local prompt

function init(args)
        runid = args[1] or tostring(math.random(100000, 999999))
        -- Pads the body to about 1 KB with what a text2video task carries anyway: its prompt.
        prompt = string.rep("a slow pan over a misty harbour at dawn, ", 20)
end

function request()
        counter = counter + 1
        local cid = string.format("%s%02d%09d", runid, tid, counter)
        local body = '{"id":"' .. cid .. '0","type":"text2video","state":"success",'
                .. '"model":"vidu2.0","prompt":"' .. prompt .. '",'
                .. '"creations":[{"id":"' .. cid .. '","uri":"https://cdn.example.com/v/'
                .. cid .. '.mp4","cover_url":"https://cdn.example.com/c/' .. cid .. '.jpg"}],'
                .. '"created_at":"2025-01-01T00:00:00Z"}'
        return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
        local e = summary.errors
        io.write(string.format("BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d "
                .. "write=%d status=%d timeout=%d\n", summary.requests, summary.duration,
                summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
        for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
                io.write(string.format("BENCH p%s_us=%d\n", tostring(p), latency:percentile(p)))
        end
        io.write(string.format("BENCH mean_us=%.1f max_us=%d\n", latency.mean, latency.max))
end
