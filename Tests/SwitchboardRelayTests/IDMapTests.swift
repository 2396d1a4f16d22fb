// IDMap against Dictionary as the model: seeded random inserts, updates, removals and lookups (including
// keys never inserted), with growth, backward-shift deletion and iteration checked after every step.
import SwitchboardIO
import SwitchboardRelay
import Testing

@Suite struct IDMapTests {
    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6, 7, 8])
    func behavesLikeADictionary(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var map = IDMap<UInt32, Int>()
        var model: [UInt32: Int] = [:]
        // A small key range forces collisions, chains and shifts; a sequential one is what the server stores.
        let range: UInt32 = seed % 2 == 0 ? 64 : 5_000
        for step in 0..<4_000 {
            let key = UInt32.random(in: 0..<range, using: &rng)
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<5:
                #expect(map.updateValue(step, forKey: key) == model.updateValue(step, forKey: key))
            case 5..<8:
                #expect(map.removeValue(forKey: key) == model.removeValue(forKey: key))
            case 8:
                map[key] = nil
                model[key] = nil
            default:
                map[key] = step
                model[key] = step
            }
            #expect(map.count == model.count)
            let probe = UInt32.random(in: 0..<(range * 2), using: &rng)
            #expect(map[probe] == model[probe])
            if step % 97 == 0 {
                var seen: [UInt32: Int] = [:]
                for (k, v) in map { #expect(seen.updateValue(v, forKey: k) == nil, "key \(k) iterated twice") }
                #expect(seen == model)
                for (k, v) in model { #expect(map[k] == v) }
            }
        }
        map.removeAll()
        #expect(map.isEmpty && map[1] == nil)
    }

    @Test func copiesAreIndependent() {
        var a: IDMap<UInt64, String> = [1: "one", 2: "two"]
        let b = a
        a[1] = "uno"
        a[3] = "three"
        #expect(b[1] == "one" && b[3] == nil && b.count == 2)
        #expect(a[1] == "uno" && a.count == 3)
        #expect(Set(a.keys) == [1, 2, 3] && Set(b.values) == ["one", "two"])
    }
}
