// The main thread's side of a run: start the load threads, move them through the stages, print a
// progress line every second on stderr, sample CPU (generator via getrusage, server via /proc) over
// the measured window, merge the threads' results and print the report (text, or JSON with --json).
import Foundation
import Glibc
import Histogram
import Synchronization
import SwitchboardIO

struct Runner {
    let plan: Plan
    let common: CommonOptions

    func execute() -> Int32 {
        Sys.ignoreSIGPIPE()
        let wantedFiles = UInt64(plan.connections) + 256
        let limit = Sys.raiseFileLimit()
        if limit < wantedFiles {
            writeStderr("sbload: the file limit is \(limit), below the \(wantedFiles) this run needs (raise `ulimit -Hn`)\n")
            return 3
        }
        Runner.installInterrupt()
        let coord = Coordinator(threads: plan.threads)
        let plan = self.plan
        var threads: [HelperThread] = []
        for i in 0..<plan.threads {
            do {
                threads.append(try HelperThread {
                    do {
                        try Worker(plan: plan, index: i, coord: coord).run()
                    } catch {
                        writeStderr("sbload: thread \(i): \(error)\n")
                        coord.failedThreads.add(1, ordering: .sequentiallyConsistent)
                        coord.results.withLock { $0[i] = ThreadResult() }
                        coord.finished.add(1, ordering: .sequentiallyConsistent)
                    }
                })
            } catch {
                writeStderr("sbload: cannot start thread: \(error)\n")
                coord.stop.store(true, ordering: .relaxed)
                coord.failedThreads.add(1, ordering: .relaxed)
                break
            }
        }
        var report = Report(plan: plan)
        let rssBefore = ProcInfo.rssBytes(pids: common.serverPid)
        let loginStart = Clock.monotonicNs()
        // Stage 1: everyone logged in.
        var lastPrint = Clock.monotonicNs()
        while coord.ready.load(ordering: .acquiring) + coord.finished.load(ordering: .acquiring) < threads.count {
            usleep(20_000)
            pollInterrupt(coord)
            if Clock.monotonicNs() - lastPrint >= 1_000_000_000 {
                lastPrint = Clock.monotonicNs()
                let loggedIn = coord.progress.withLock { $0.reduce(UInt64(0)) { $0 + $1.counters.loggedIn } }
                writeStderr("logging in: \(loggedIn) of \(plan.scenario == .offline ? plan.pairs : plan.connections)\n")
            }
        }
        let loginEnd = Clock.monotonicNs()
        let setupFailed = coord.failedThreads.load(ordering: .acquiring) > 0
        var window = Window()
        if !setupFailed {
            switch plan.scenario {
            case .relay:
                let t0 = Clock.monotonicNs() + 1_000_000
                window.start = t0 + plan.warmupNs
                window.end = window.start + plan.durationNs
                coord.goNs.store(t0, ordering: .releasing)
                progressLoop(coord, threads: threads.count, t0: t0, window: &window)
            case .offline:
                let t0 = Clock.monotonicNs() + 1_000_000
                window.start = t0
                window.end = .max
                coord.goNs.store(t0, ordering: .releasing)
                window.sample(at: t0, pid: common.serverPid)
                while coord.phaseADone.load(ordering: .acquiring) + coord.finished.load(ordering: .acquiring) < threads.count {
                    usleep(10_000)
                    pollInterrupt(coord)
                }
                window.sampleEnd(pid: common.serverPid)
                report.phaseA = window
                var phaseB = Window()
                let t1 = Clock.monotonicNs()
                phaseB.start = t1
                phaseB.sample(at: t1, pid: common.serverPid)
                coord.phaseBNs.store(t1, ordering: .releasing)
                waitFinished(coord, threads: threads.count)
                phaseB.sampleEnd(pid: common.serverPid)
                report.phaseB = phaseB
            case .connect:
                report.loginSeconds = Double(loginEnd - loginStart) / 1e9
                usleep(500_000) // let the server settle (hash threads idle, buffers released)
                let rssAfter = ProcInfo.rssBytes(pids: common.serverPid)
                if let rssBefore, let rssAfter {
                    report.serverRSSBeforeBytes = rssBefore
                    report.serverRSSAfterBytes = rssAfter
                }
                let holdEnd = Clock.monotonicNs() + plan.durationNs
                while Clock.monotonicNs() < holdEnd && !interruptedFlag() { usleep(20_000) }
                if let rss = ProcInfo.rssBytes(pids: common.serverPid) { report.serverRSSAfterHoldBytes = rss }
                coord.stop.store(true, ordering: .releasing)
                waitFinished(coord, threads: threads.count)
            }
        } else {
            coord.stop.store(true, ordering: .releasing)
            waitFinished(coord, threads: threads.count)
        }
        for t in threads { t.join() }
        let results = coord.results.withLock { $0.compactMap { $0 } }
        report.merge(results, window: window, failedThreads: coord.failedThreads.load(ordering: .acquiring))
        if common.json {
            writeStderr(report.text())
            print(report.json())
        } else {
            print(report.text(), terminator: "")
        }
        return report.exitCode
    }

    private static func installInterrupt() { installSignalHandlers() }

    private func pollInterrupt(_ coord: Coordinator) {
        if interruptedFlag() { coord.stop.store(true, ordering: .releasing) }
    }

    private func waitFinished(_ coord: Coordinator, threads: Int) {
        while coord.finished.load(ordering: .acquiring) < threads {
            usleep(10_000)
            pollInterrupt(coord)
        }
    }

    /// Prints one progress line per second until every thread finished; samples CPU over the window.
    private func progressLoop(_ coord: Coordinator, threads: Int, t0: UInt64, window: inout Window) {
        var previous = Counters()
        var lastNs = t0
        var nextPrint = t0 + 1_000_000_000
        var startSampled = false, endSampled = false
        while coord.finished.load(ordering: .acquiring) < threads {
            usleep(5_000)
            pollInterrupt(coord)
            let now = Clock.monotonicNs()
            if !startSampled && now >= window.start { window.sample(at: now, pid: common.serverPid); startSampled = true }
            if startSampled && !endSampled && now >= window.end { window.sampleEnd(pid: common.serverPid); endSampled = true }
            guard now >= nextPrint else { continue }
            nextPrint += 1_000_000_000
            var total = Counters()
            var merged = Latency.make()
            coord.progress.withLock { slots in
                for i in slots.indices {
                    total.add(slots[i].counters)
                    merged.add(slots[i].interval)
                    slots[i].interval.reset()
                }
            }
            let seconds = Double(now - lastNs) / 1e9
            let sendRate = Double(total.sent - previous.sent) / seconds
            let recvRate = Double(total.received - previous.received) / seconds
            let phase = now < window.start ? "warm-up" : (now < window.end ? "measure" : "drain")
            let p99 = merged.totalCount > 0 ? Format.duration(merged.valueAtPercentile(99)) : "-"
            writeStderr(String(format: "[%5.1fs %@] sent %@/s  received %@/s  p99 %@  errors %llu\n",
                               Double(now - t0) / 1e9, phase, Format.count(sendRate), Format.count(recvRate), p99,
                               total.errors + total.corrupt))
            previous = total
            lastNs = now
        }
        if startSampled && !endSampled { window.sampleEnd(pid: common.serverPid) }
        if !startSampled { window.sample(at: Clock.monotonicNs(), pid: common.serverPid); window.sampleEnd(pid: common.serverPid) }
    }
}

// MARK: - interrupt flag

private let interruptFlag = Atomic<Bool>(false)

private func installSignalHandlers() {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in interruptFlag.store(true, ordering: .relaxed) }
    sigemptyset(&action.sa_mask)
    sigaction(SIGINT, &action, nil)
    sigaction(SIGTERM, &action, nil)
}

func interruptedFlag() -> Bool { interruptFlag.load(ordering: .relaxed) }
