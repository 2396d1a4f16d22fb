// swift-tools-version: 6.2
// Switchboard: a single-threaded epoll chat relay. Layers import downward only:
// C shims -> SwitchboardIO -> SwitchboardProtocol / SwitchboardStore -> SwitchboardRelay
// -> SwitchboardServer / SwitchboardClient -> executables.
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .treatAllWarnings(as: .error),
    // Release builds skip run-time exclusivity checks: a profile of the bulk relay spent ~25% of the
    // loop's CPU in swift_beginAccess/AccessSet (perf/README.md). Debug builds, and so the tests,
    // keep every check.
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "switchboard",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "switchboard", targets: ["switchboard"]),
        .executable(name: "sbchat", targets: ["sbchat"]),
        .executable(name: "sbload", targets: ["sbload"]),
        .library(name: "SwitchboardProtocol", targets: ["SwitchboardProtocol"]),
        .library(name: "SwitchboardRelay", targets: ["SwitchboardRelay"]),
        .library(name: "SwitchboardSession", targets: ["SwitchboardSession"]),
        .library(name: "SwitchboardStore", targets: ["SwitchboardStore"]),
        .library(name: "SwitchboardIO", targets: ["SwitchboardIO"]),
        .library(name: "SwitchboardCluster", targets: ["SwitchboardCluster"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CLMDB", pkgConfig: "lmdb",
                       providers: [.apt(["liblmdb-dev"])]),
        .target(name: "CSwitchboard", dependencies: ["COpenSSL"]),
        .target(name: "SwitchboardIO", dependencies: ["CSwitchboard"], swiftSettings: strict),
        .target(name: "SwitchboardTLS", dependencies: ["CSwitchboard", "COpenSSL", "SwitchboardIO"], swiftSettings: strict),
        .target(name: "SwitchboardProtocol", dependencies: ["SwitchboardIO"], swiftSettings: strict),
        .target(name: "SwitchboardStore",
                dependencies: ["CLMDB", "COpenSSL"],
                swiftSettings: strict),
        // NATS client (sans-I/O protocol core + epoll driver), JetStream and key-value calls: the cluster
        // mode's transport (issue 12). Beside the store: it needs only SwitchboardIO.
        .target(name: "SwitchboardCluster", dependencies: ["SwitchboardIO"], exclude: ["README.md"],
                swiftSettings: strict),
        .target(name: "SwitchboardRelay",
                dependencies: ["SwitchboardProtocol", "SwitchboardStore", "SwitchboardIO"],
                swiftSettings: strict),
        .target(name: "SwitchboardSession",
                dependencies: ["SwitchboardRelay", "SwitchboardProtocol", "SwitchboardStore", "SwitchboardIO",
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),
        .target(name: "SwitchboardServer",
                dependencies: ["SwitchboardSession", "SwitchboardRelay", "SwitchboardProtocol", "SwitchboardStore", "SwitchboardIO", "SwitchboardTLS",
                               "SwitchboardCluster", .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),
        .target(name: "SwitchboardClient",
                dependencies: ["SwitchboardProtocol", "SwitchboardIO", "SwitchboardTLS", "CSwitchboard"],
                swiftSettings: strict),
        // The terminal client keeps its local conversation history in LMDB (HistoryStore.swift).
        .target(name: "SwitchboardTUI",
                dependencies: ["SwitchboardClient", "SwitchboardProtocol", "SwitchboardIO", "CLMDB"],
                swiftSettings: strict),
        .executableTarget(name: "switchboard",
                          dependencies: ["SwitchboardServer", "SwitchboardStore", "SwitchboardTLS", "SwitchboardCluster", "SwitchboardSession",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          swiftSettings: strict),
        .executableTarget(name: "sbchat",
                          dependencies: ["SwitchboardClient", "SwitchboardProtocol", "SwitchboardTUI", "SwitchboardTLS",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: strict),
        .executableTarget(name: "sbload",
                          dependencies: ["SwitchboardClient", "SwitchboardProtocol", "SwitchboardIO", "SwitchboardTLS",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Histogram", package: "hdrhistogram-swift")],
                          swiftSettings: strict),
        .testTarget(name: "SwitchboardTUITests", dependencies: ["SwitchboardTUI"], exclude: ["e2e-tmux.sh", "e2e-xterm.sh", "e2e-devices.sh", "e2e-failover.sh"],
                    swiftSettings: strict),
        .testTarget(name: "SwitchboardTLSTests", dependencies: ["SwitchboardTLS", "SwitchboardIO"], swiftSettings: strict),
        .testTarget(name: "SwitchboardIOTests", dependencies: ["SwitchboardIO"], swiftSettings: strict),
        .testTarget(name: "SwitchboardProtocolTests", dependencies: ["SwitchboardProtocol"], swiftSettings: strict),
        .testTarget(name: "SwitchboardStoreTests", dependencies: ["SwitchboardStore"], swiftSettings: strict),
        // Starting real nats-server processes for the tests that need NATS (no test framework inside).
        .target(name: "NATSTestHarness", dependencies: ["SwitchboardCluster", "SwitchboardIO"], path: "Tests/NATSTestHarness",
                swiftSettings: strict),
        .testTarget(name: "SwitchboardClusterTests", dependencies: ["SwitchboardCluster", "SwitchboardIO", "NATSTestHarness"],
                    swiftSettings: strict),
        // The cluster log (SwitchboardServer/ClusterLog.swift) against a real three-server nats-server cluster and
        // real LMDB replicas.
        .testTarget(name: "SwitchboardClusterLogTests",
                    dependencies: ["SwitchboardServer", "SwitchboardCluster", "SwitchboardSession", "SwitchboardStore", "NATSTestHarness",
                                   "SwitchboardIO", .product(name: "Logging", package: "swift-log")],
                    swiftSettings: strict),
        .testTarget(name: "SwitchboardRelayTests", dependencies: ["SwitchboardRelay"], swiftSettings: strict),
        .testTarget(name: "SwitchboardSessionTests",
                    dependencies: ["SwitchboardSession", "SwitchboardRelay", "SwitchboardProtocol", "SwitchboardStore", "SwitchboardIO"],
                    swiftSettings: strict),
        .testTarget(name: "SwitchboardServerTests",
                    dependencies: ["SwitchboardServer", "SwitchboardClient", "SwitchboardStore", "SwitchboardTLS", "SwitchboardTUI",
                                   "NATSTestHarness", "SwitchboardCluster"],
                    swiftSettings: strict),
    ]
)
