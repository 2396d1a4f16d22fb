// swift-tools-version: 6.1
// Switchboard's micro-benchmarks (ordo-one/package-benchmark): codec, buffers, the relay core's
// per-message path, LMDB. Run from this folder: `swift package benchmark` (see ../perf/README.md).
// Thresholds live next to each benchmark (malloc counts of the hot paths must stay 0).
import PackageDescription

// The parent package is a path dependency, whose identity is its folder's name: derive it from this
// file's location so a clone into a folder of any name works.
let parentFolder: String = {
    let components = "\(#filePath)".split(separator: "/")
    return String(components[components.count - 3])
}()

let benchmarkPlugin: [Target.PluginUsage] = [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
let benchmark: Target.Dependency = .product(name: "Benchmark", package: "package-benchmark")

func parent(_ product: String) -> Target.Dependency { .product(name: product, package: parentFolder) }

let package = Package(
    name: "SwitchboardBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/ordo-one/package-benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(name: "CodecBenchmarks",
                          dependencies: [benchmark, parent("SwitchboardProtocol"), parent("SwitchboardIO")],
                          path: "Benchmarks/CodecBenchmarks", plugins: benchmarkPlugin),
        .executableTarget(name: "RelayBenchmarks",
                          dependencies: [benchmark, parent("SwitchboardRelay"), parent("SwitchboardStore"), parent("SwitchboardProtocol")],
                          path: "Benchmarks/RelayBenchmarks", plugins: benchmarkPlugin),
        .executableTarget(name: "StoreBenchmarks",
                          dependencies: [benchmark, parent("SwitchboardStore")],
                          path: "Benchmarks/StoreBenchmarks", plugins: benchmarkPlugin),
        // Not a benchmark: a driver for allocation profilers (valgrind --tool=dhat).
        .executableTarget(name: "RelayAllocProbe",
                          dependencies: [parent("SwitchboardRelay"), parent("SwitchboardStore")],
                          path: "Probes/RelayAllocProbe",
                          swiftSettings: [.unsafeFlags(["-g"])]),
        // Not a benchmark: the server core's per-message path for callgrind (perf/instructions-per-message.sh).
        .target(name: "CCallgrind", path: "Probes/CCallgrind"),
        .executableTarget(name: "CoreInstructionProbe",
                          dependencies: ["CCallgrind", parent("SwitchboardSession"), parent("SwitchboardRelay"),
                                         parent("SwitchboardStore"), parent("SwitchboardProtocol"), parent("SwitchboardIO"),
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Probes/CoreInstructionProbe",
                          swiftSettings: [.unsafeFlags(["-g", "-enforce-exclusivity=unchecked"])]),
    ]
)
