// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Capstan",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "capstan", targets: ["capstan"]),
        .library(name: "CapstanModel", targets: ["CapstanModel"]),
        .library(name: "CapstanRuntime", targets: ["CapstanRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
    ],
    targets: [
        // The six kinds, their decoding, defaulting, validation and CRD schemas. Pure: no I/O.
        .target(
            name: "CapstanModel",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Generic controller machinery; for now the spec-directory reader. Knows no kind.
        .target(
            name: "CapstanRuntime",
            dependencies: [
                "CapstanModel",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        // The reconcilers, written against platform protocols (no SQLite, processes or HTTP).
        .target(
            name: "CapstanControllers",
            dependencies: ["CapstanModel", "CapstanRuntime", .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "X509", package: "swift-certificates"), .product(name: "SwiftASN1", package: "swift-asn1")]
        ),
        // Linux calls Swift cannot import (variadic syscall): pidfd_open, prlimit.
        .target(name: "CSystemShims"),
        // zlib's raw deflate with a preset dictionary (its init calls are C macros).
        .target(name: "CZlibShims", linkerSettings: [.linkedLibrary("z")]),
        // Integrations both platforms use: S3-compatible storage (Signature V4), Prometheus
        // queries, host metrics, the notifiers (HTTP receivers, SMTP).
        .target(
            name: "CapstanIntegrations",
            dependencies: [
                "CapstanModel", "CapstanRuntime", "CapstanControllers",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The local platform: the SQLite state store, artifacts, the process supervisor, the
        // health prober and the TCP router.
        .target(
            name: "CapstanLocal",
            dependencies: [
                "CSystemShims",
                "CapstanModel",
                "CapstanRuntime",
                "CapstanControllers",
                "CapstanIntegrations",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The Kubernetes platform: the API client (kubeconfig, TLS, list/watch, patches, the
        // rate limiter and retries), the Lease store.
        .target(
            name: "CapstanKube",
            dependencies: [
                "CZlibShims",
                "CapstanModel",
                "CapstanRuntime",
                "CapstanControllers",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The command-line interface: thin.
        .executableTarget(
            name: "capstan",
            dependencies: [
                "CSystemShims",
                "CapstanModel",
                "CapstanRuntime",
                "CapstanControllers",
                "CapstanLocal",
                "CapstanKube",
                "CapstanIntegrations",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "CapstanModelTests",
            dependencies: [
                "CapstanModel",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .testTarget(
            name: "CapstanRuntimeTests",
            dependencies: [
                "CapstanModel", "CapstanRuntime",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CapstanControllersTests",
            dependencies: ["CapstanModel", "CapstanRuntime", "CapstanControllers"]
        ),
        .testTarget(
            name: "CapstanLocalTests",
            dependencies: ["CapstanModel", "CapstanRuntime", "CapstanControllers", "CapstanLocal", "CapstanIntegrations",
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "Crypto", package: "swift-crypto")]
        ),
        .testTarget(
            name: "CapstanKubeTests",
            dependencies: ["CapstanModel", "CapstanRuntime", "CapstanControllers", "CapstanKube", "CapstanLocal"]
        ),
        .testTarget(
            name: "CapstanCLITests",
            dependencies: ["CSystemShims", "CapstanModel", "CapstanRuntime", "CapstanIntegrations", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "Crypto", package: "swift-crypto")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
