// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.30;

/// Minimal ERC-20 surface the exchange uses.
interface IERC20Like {
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function transfer(address to, uint256 amount) external returns (bool);
    function balanceOf(address who) external view returns (uint256);
}

/// @title Perpetual-futures exchange settled by a quorum of relayers.
/// @notice Units, encodings and formulas: docs/units.md. Protocol: docs/DESIGN.md ("Quorum protocol").
/// The contract is the judge: it re-checks every order signature, fill amount, margin requirement and the relayers'
/// quorum signatures. A fill that fails a per-fill check is skipped with a reason code; the batch still takes its seq.
contract Exchange {
    // ------------------------------------------------------------------------------------------------ constants
    uint256 internal constant SIZE_ONE = 1e8;
    uint256 internal constant PPM = 1e6;
    uint256 internal constant MAX_MARKETS = 64;
    uint256 internal constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 internal constant CANCELLED_BIT = 1 << 255;
    uint256 internal constant MAX_PRICE_BOUND = 1 << 62;
    uint256 internal constant MAX_SIZE_BOUND = 1 << 62;
    uint256 internal constant MAX_FEE = 100_000;
    uint256 internal constant MAX_DEPOSIT = 1 << 96;
    uint32 internal constant NO_MARKET = type(uint32).max;

    uint8 internal constant FLAG_POST_ONLY = 1;
    uint8 internal constant FLAG_REDUCE_ONLY = 2;
    uint8 internal constant FLAG_IOC = 4;
    uint8 internal constant FLAG_FOK = 8;
    uint8 internal constant KNOWN_FLAGS = 15;

    uint8 internal constant TRIGGER_NONE = 0;
    uint8 internal constant TRIGGER_STOP_LOSS = 1;
    uint8 internal constant TRIGGER_TAKE_PROFIT = 2;

    // Reasons a fill is skipped (FillSkipped.reason). Stable: the relayers map them to names.
    uint8 public constant SKIP_BAD_SIGNATURE = 1;
    uint8 public constant SKIP_SELF_TRADE = 2;
    uint8 public constant SKIP_MARKET_MISMATCH = 3;
    uint8 public constant SKIP_EXPIRED = 4;
    uint8 public constant SKIP_CANCELLED = 5;
    uint8 public constant SKIP_NO_CROSS = 6;
    uint8 public constant SKIP_WRONG_MAKER = 7;
    uint8 public constant SKIP_POST_ONLY_TAKER = 8;
    uint8 public constant SKIP_TRIGGER = 9;
    uint8 public constant SKIP_BOUNDS = 10;
    uint8 public constant SKIP_OVERFILL = 11;
    uint8 public constant SKIP_FOK = 12;
    uint8 public constant SKIP_REDUCE_ONLY = 13;
    uint8 public constant SKIP_MARGIN_MAKER = 14;
    uint8 public constant SKIP_MARGIN_TAKER = 15;
    uint8 public constant SKIP_POSITION_LIMIT = 16;

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant ORDER_TYPEHASH = keccak256(
        "Order(address trader,uint32 market,uint8 side,uint64 price,uint64 amount,uint64 salt,uint32 createdAt,"
        "uint32 expiry,uint8 flags,uint8 triggerKind,uint64 triggerPrice)"
    );
    bytes32 internal constant FILL_TYPEHASH = keccak256("Fill(uint16 maker,uint16 taker,uint64 amount)");
    bytes32 internal constant BATCH_TYPEHASH = keccak256(
        "Batch(uint64 seq,uint32 round,bytes32 prevBatchHash,uint64 setVersion,uint32 deadline,bytes32[] orders,"
        "Fill[] fills)Fill(uint16 maker,uint16 taker,uint64 amount)"
    );
    bytes32 internal constant NAME_HASH = keccak256("PerpRelayerExchange");
    bytes32 internal constant VERSION_HASH = keccak256("1");

    // ------------------------------------------------------------------------------------------------ types
    struct Order {
        address trader;
        uint32 market;
        uint8 side; // 0 buy, 1 sell
        uint64 price;
        uint64 amount;
        uint64 salt;
        uint32 createdAt;
        uint32 expiry;
        uint8 flags;
        uint8 triggerKind;
        uint64 triggerPrice;
    }

    struct Signature {
        bytes32 r;
        bytes32 s;
        uint8 v;
    }

    struct SignedOrder {
        Order order;
        Signature sig;
    }

    struct Fill {
        uint16 maker;
        uint16 taker;
        uint64 amount;
    }

    struct Batch {
        uint64 seq;
        uint32 round;
        bytes32 prevBatchHash;
        uint64 setVersion;
        uint32 deadline;
        SignedOrder[] orders;
        Fill[] fills;
    }

    struct MarketParams {
        uint32 imr;
        uint32 mmr;
        uint32 makerFee;
        uint32 takerFee;
        uint32 liqPenalty;
        uint64 tick;
        uint64 minSize;
        uint64 maxOrderSize;
        uint64 maxPosition;
        uint64 maxPrice;
        uint64 maxFundingDelta;
    }

    struct Market {
        bool exists;
        uint64 oraclePrice;
        int64 fundingIndex;
        MarketParams params;
    }

    /// One storage slot: size (int64) | cost (int128) | fundingIndex (int64).
    struct Position {
        int64 size;
        int128 cost;
        int64 fundingIndex;
    }

    /// One storage slot: balance (int128, collateral atoms x SIZE_ONE: an exact quote balance, docs/units.md)
    /// | mask of markets with an open position (uint64) | cancelUpTo salt (uint64). Everything a fill reads of an
    /// account is in this one slot.
    struct Account {
        int128 balance;
        uint64 openMask;
        uint64 cancelledUpTo;
    }

    /// A market as read once per batch (and reused while consecutive fills stay in it).
    struct MarketCache {
        uint32 id;
        bool ok;
        uint64 oraclePrice;
        int64 fundingIndex;
        MarketParams params;
    }

    /// In-memory working state of one side of a fill.
    struct Side {
        address trader;
        Account account;
        Position position;
        int256 balance;
        int256 fundingOwed;
        bool shrankOnly;
    }

    // ------------------------------------------------------------------------------------------------ storage
    IERC20Like public immutable token;
    uint256 internal immutable cachedChainId;
    bytes32 internal immutable cachedDomainSeparator;

    address public owner;
    address public oracle;

    mapping(uint256 => Market) internal markets;
    mapping(address => Account) internal accounts;
    mapping(address => mapping(uint256 => Position)) internal positions;
    /// (trader, salt) -> filled amount (low 64 bits) | CANCELLED_BIT
    mapping(address => mapping(uint64 => uint256)) internal orderState;

    uint64 public lastSeq;
    bytes32 public lastBatchHash;

    uint64 public setVersion;
    /// The set version batch lastSeq+1 is checked against: the one in force when batch lastSeq landed.
    uint64 public activeSetVersion;
    address[] internal members;
    mapping(uint64 => mapping(address => bool)) internal inSet;
    mapping(uint64 => uint16) public thresholdOf;
    mapping(uint64 => uint16) public setSizeOf;

    int256 public feesCollected;
    int256 public insuranceFund;
    int256 public fundingPool;
    int256 public badDebt;

    // ------------------------------------------------------------------------------------------------ events
    event RelayersUpdated(uint64 indexed version, address[] members, uint16 threshold);
    event OwnerChanged(address indexed owner);
    event OracleChanged(address indexed oracle);
    event MarketCreated(uint32 indexed market, MarketParams params);
    event MarketUpdated(uint32 indexed market, MarketParams params);
    event OraclePrice(uint32 indexed market, uint64 price);
    event FundingUpdated(uint32 indexed market, int64 delta, int64 index);
    event Deposited(address indexed trader, uint256 amount, int256 balance);
    event Withdrawn(address indexed trader, uint256 amount, int256 balance);
    event OrderCancelled(address indexed trader, uint64 salt);
    event CancelledUpTo(address indexed trader, uint64 salt);
    /// A settled fill: both orders' new fill counters, the fees, and both traders' new balance and position size in
    /// the market (position cost and funding index follow from docs/units.md; AccountUpdated carries them where a
    /// fill is not the cause).
    event OrderFilled(
        uint64 indexed seq,
        address indexed maker,
        address indexed taker,
        uint256 fillIndex,
        bytes32 makerHash,
        bytes32 takerHash,
        uint64 makerSalt,
        uint64 takerSalt,
        uint32 market,
        uint8 takerSide,
        uint64 price,
        uint64 amount,
        uint64 makerFilled,
        uint64 takerFilled,
        uint256 makerFee,
        uint256 takerFee,
        int256 makerBalance,
        int256 takerBalance,
        int64 makerSize,
        int64 takerSize
    );
    event FillSkipped(uint64 indexed seq, uint256 fillIndex, bytes32 makerHash, bytes32 takerHash, uint8 reason);
    /// The full new state of a trader's position in one market and of its (scaled) balance.
    event AccountUpdated(
        address indexed trader, uint32 indexed market, int64 size, int128 cost, int64 fundingIndex, int256 balance
    );
    event BatchSettled(
        uint64 indexed seq,
        bytes32 batchHash,
        uint32 round,
        uint64 setVersion,
        uint256 filled,
        uint256 skipped,
        address submitter
    );
    event Liquidated(
        address indexed trader,
        address indexed liquidator,
        uint32 indexed market,
        uint64 amount,
        uint64 price,
        uint256 penalty,
        int256 badDebt
    );
    event FeesWithdrawn(address indexed to, uint256 amount);

    // ------------------------------------------------------------------------------------------------ errors
    error NotOwner();
    error NotOracle();
    error NotTrader();
    error ZeroAddress();
    error InvalidRelayerSet(uint8 reason);
    error UnknownMarket(uint32 market);
    error MarketExists(uint32 market);
    error BadMarketParams(uint8 reason);
    error BadPrice();
    error FundingDeltaTooLarge(int64 delta, uint64 max);
    error ZeroAmount();
    error TransferFailed();
    error InsufficientCollateral(int256 available, uint256 amount);
    error AmountTooLarge(uint256 amount);
    error InsufficientMargin(int256 equity, uint256 requirement);
    error AccountHealthy(int256 equity, uint256 maintenance);
    error SaltNotIncreasing(uint64 current, uint64 requested);
    error BadSeq(uint64 expected, uint64 got);
    error BadPrevBatchHash(bytes32 expected, bytes32 got);
    error DeadlinePassed(uint32 deadline, uint256 timestamp);
    error WrongSetVersion(uint64 expected, uint64 got);
    error NotEnoughSignatures(uint256 have, uint256 need);
    error BadQuorumSignature(uint256 index);
    error SignersNotAscending(uint256 index);
    error SignerNotInSet(address signer);
    error TooManyOrders(uint256 count);
    error FillIndexOutOfRange(uint256 fillIndex);
    error BadLiquidation(uint8 reason);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    modifier onlyOracle() {
        if (msg.sender != oracle) revert NotOracle();
        _;
    }

    constructor(IERC20Like token_, address owner_, address oracle_, address[] memory relayers, uint16 threshold) {
        if (address(token_) == address(0) || owner_ == address(0) || oracle_ == address(0)) revert ZeroAddress();
        token = token_;
        owner = owner_;
        oracle = oracle_;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator();
        _setRelayers(relayers, new address[](0), threshold);
        activeSetVersion = setVersion;
    }

    // ------------------------------------------------------------------------------------------------ admin
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        owner = newOwner;
        emit OwnerChanged(newOwner);
    }

    function setOracle(address newOracle) external onlyOwner {
        if (newOracle == address(0)) revert ZeroAddress();
        oracle = newOracle;
        emit OracleChanged(newOracle);
    }

    /// Atomically change the relayer set: a new version. It applies from the batch after the next one.
    function setRelayers(address[] calldata adds, address[] calldata removes, uint16 threshold) external onlyOwner {
        _setRelayers(adds, removes, threshold);
    }

    function _setRelayers(address[] memory adds, address[] memory removes, uint16 threshold) internal {
        uint64 old = setVersion;
        uint64 version = old + 1;
        address[] memory current = members;
        // Removes must be members, each at most once.
        for (uint256 i = 0; i < removes.length; i++) {
            if (!inSet[old][removes[i]] || old == 0) revert InvalidRelayerSet(1);
            for (uint256 j = 0; j < i; j++) {
                if (removes[j] == removes[i]) revert InvalidRelayerSet(2);
            }
        }
        delete members;
        for (uint256 i = 0; i < current.length; i++) {
            address m = current[i];
            bool removed = false;
            for (uint256 j = 0; j < removes.length; j++) {
                if (removes[j] == m) {
                    removed = true;
                    break;
                }
            }
            if (!removed) {
                members.push(m);
                inSet[version][m] = true;
            }
        }
        for (uint256 i = 0; i < adds.length; i++) {
            address a = adds[i];
            if (a == address(0)) revert InvalidRelayerSet(3);
            if (inSet[version][a]) revert InvalidRelayerSet(4); // already a member, or added twice
            members.push(a);
            inSet[version][a] = true;
        }
        uint256 n = members.length;
        if (n == 0) revert InvalidRelayerSet(5);
        if (n > type(uint16).max) revert InvalidRelayerSet(6);
        if (uint256(threshold) * 2 <= n || threshold > n) revert InvalidRelayerSet(7); // strict majority, <= n
        setVersion = version;
        thresholdOf[version] = threshold;
        setSizeOf[version] = uint16(n);
        emit RelayersUpdated(version, members, threshold);
    }

    function createMarket(uint32 id, MarketParams calldata params) external onlyOwner {
        if (id >= MAX_MARKETS) revert BadMarketParams(0);
        if (markets[id].exists) revert MarketExists(id);
        _checkParams(params);
        Market storage m = markets[id];
        m.exists = true;
        m.params = params;
        emit MarketCreated(id, params);
    }

    function updateMarket(uint32 id, MarketParams calldata params) external onlyOwner {
        if (!markets[id].exists) revert UnknownMarket(id);
        _checkParams(params);
        markets[id].params = params;
        emit MarketUpdated(id, params);
    }

    function _checkParams(MarketParams calldata p) internal pure {
        if (p.mmr == 0 || p.mmr > p.imr || p.imr > PPM) revert BadMarketParams(1);
        if (p.makerFee > MAX_FEE || p.takerFee > MAX_FEE || p.liqPenalty > MAX_FEE) revert BadMarketParams(2);
        if (p.tick == 0 || p.maxPrice == 0 || p.maxPrice > MAX_PRICE_BOUND || p.maxPrice % p.tick != 0) {
            revert BadMarketParams(3);
        }
        if (p.minSize == 0 || p.maxOrderSize < p.minSize || p.maxOrderSize > MAX_SIZE_BOUND) revert BadMarketParams(4);
        if (p.maxPosition == 0 || p.maxPosition > MAX_SIZE_BOUND) revert BadMarketParams(5);
    }

    function setOraclePrice(uint32 market, uint64 price) external onlyOracle {
        Market storage m = markets[market];
        if (!m.exists) revert UnknownMarket(market);
        if (price == 0 || price > m.params.maxPrice) revert BadPrice();
        m.oraclePrice = price;
        emit OraclePrice(market, price);
    }

    /// Advance the cumulative funding index (+ = longs pay shorts), bounded per update.
    function updateFunding(uint32 market, int64 delta) external onlyOracle {
        Market storage m = markets[market];
        if (!m.exists) revert UnknownMarket(market);
        uint64 max = m.params.maxFundingDelta;
        if (_abs(int256(delta)) > max) revert FundingDeltaTooLarge(delta, max);
        m.fundingIndex += delta;
        emit FundingUpdated(market, delta, m.fundingIndex);
    }

    function withdrawFees(address to, uint256 amount) external onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        if (amount > MAX_DEPOSIT || int256(amount) > feesCollected) revert InsufficientCollateral(feesCollected, amount);
        feesCollected -= int256(amount);
        if (!token.transfer(to, amount)) revert TransferFailed();
        emit FeesWithdrawn(to, amount);
    }

    /// Anyone may top up the insurance fund.
    function fundInsurance(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert AmountTooLarge(amount);
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        insuranceFund += int256(amount);
    }

    // ------------------------------------------------------------------------------------------------ traders
    function deposit(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert AmountTooLarge(amount);
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        Account storage a = accounts[msg.sender];
        int256 balance = int256(a.balance) + int256(amount * SIZE_ONE);
        if (balance > type(int128).max) revert AmountTooLarge(amount);
        a.balance = int128(balance);
        emit Deposited(msg.sender, amount, a.balance);
    }

    /// Withdraw only while the account stays above initial margin afterwards.
    function withdraw(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert AmountTooLarge(amount);
        Account storage a = accounts[msg.sender];
        int256 balance = int256(a.balance) - int256(amount * SIZE_ONE);
        (int256 eq, uint256 initial,) = _health(msg.sender, a.openMask, balance);
        if (eq < int256(initial)) revert InsufficientMargin(eq, initial);
        a.balance = int128(balance);
        if (!token.transfer(msg.sender, amount)) revert TransferFailed();
        emit Withdrawn(msg.sender, amount, balance);
    }

    /// Cancel every version of (trader, salt). Only the trader may.
    function cancel(Order calldata order) external {
        if (msg.sender != order.trader) revert NotTrader();
        orderState[order.trader][order.salt] |= CANCELLED_BIT;
        emit OrderCancelled(order.trader, order.salt);
    }

    /// Cancel every order of the sender with salt < `salt`.
    function cancelUpTo(uint64 salt) external {
        Account storage a = accounts[msg.sender];
        uint64 current = a.cancelledUpTo;
        if (salt <= current) revert SaltNotIncreasing(current, salt);
        a.cancelledUpTo = salt;
        emit CancelledUpTo(msg.sender, salt);
    }

    // ------------------------------------------------------------------------------------------------ settlement
    function settleBatch(Batch calldata b, Signature[] calldata sigs) external {
        uint64 seq = lastSeq + 1;
        if (b.seq != seq) revert BadSeq(seq, b.seq);
        if (b.prevBatchHash != lastBatchHash) revert BadPrevBatchHash(lastBatchHash, b.prevBatchHash);
        if (block.timestamp > b.deadline) revert DeadlinePassed(b.deadline, block.timestamp);
        uint64 version = activeSetVersion;
        if (b.setVersion != version) revert WrongSetVersion(version, b.setVersion);
        uint256 nOrders = b.orders.length;
        if (nOrders > type(uint16).max) revert TooManyOrders(nOrders);

        bytes32[] memory hashes = new bytes32[](nOrders);
        bytes32 domain = _domainSeparator();
        for (uint256 i = 0; i < nOrders; i++) {
            hashes[i] = _digest(domain, _orderStructHash(b.orders[i].order));
        }
        bytes32 digest = _batchDigest(domain, b, hashes);
        _checkQuorum(digest, sigs, version);

        // 0 = not checked yet, 1 = valid, 2 = invalid. Each order's signature is checked at most once.
        uint8[] memory sigState = new uint8[](nOrders);
        uint256 applied;
        uint256 skipped;
        MarketCache memory mc;
        mc.id = NO_MARKET;
        for (uint256 i = 0; i < b.fills.length; i++) {
            Fill calldata f = b.fills[i];
            if (f.maker >= nOrders || f.taker >= nOrders) revert FillIndexOutOfRange(i);
            uint8 reason = _checkSignatures(b, hashes, sigState, f);
            if (reason == 0) {
                reason = _settleFill(
                    seq, i, b.orders[f.maker].order, b.orders[f.taker].order, hashes[f.maker], hashes[f.taker], f.amount, mc
                );
            }
            if (reason == 0) {
                applied++;
            } else {
                skipped++;
                emit FillSkipped(seq, i, hashes[f.maker], hashes[f.taker], reason);
            }
        }
        lastSeq = seq;
        lastBatchHash = digest;
        activeSetVersion = setVersion; // the set in force now applies to the next batch
        emit BatchSettled(seq, digest, b.round, b.setVersion, applied, skipped, msg.sender);
    }

    function _checkQuorum(bytes32 digest, Signature[] calldata sigs, uint64 version) internal view {
        uint256 need = thresholdOf[version];
        if (sigs.length < need) revert NotEnoughSignatures(sigs.length, need);
        address previous = address(0);
        for (uint256 i = 0; i < sigs.length; i++) {
            address signer = _recover(digest, sigs[i].r, sigs[i].s, sigs[i].v);
            if (signer == address(0)) revert BadQuorumSignature(i);
            if (signer <= previous) revert SignersNotAscending(i);
            if (!inSet[version][signer]) revert SignerNotInSet(signer);
            previous = signer;
        }
    }

    function _checkSignatures(Batch calldata b, bytes32[] memory hashes, uint8[] memory sigState, Fill calldata f)
        internal
        pure
        returns (uint8)
    {
        uint256[2] memory idx = [uint256(f.maker), uint256(f.taker)];
        for (uint256 k = 0; k < 2; k++) {
            uint256 i = idx[k];
            if (sigState[i] == 0) {
                Signature calldata s = b.orders[i].sig;
                address signer = _recover(hashes[i], s.r, s.s, s.v);
                sigState[i] = (signer != address(0) && signer == b.orders[i].order.trader) ? 1 : 2;
            }
            if (sigState[i] != 1) return SKIP_BAD_SIGNATURE;
        }
        return 0;
    }

    function _loadMarket(MarketCache memory mc, uint32 id) internal view {
        Market storage m = markets[id];
        mc.id = id;
        mc.ok = m.exists && m.oraclePrice != 0;
        mc.oraclePrice = m.oraclePrice;
        mc.fundingIndex = m.fundingIndex;
        mc.params = m.params;
    }

    /// Checks one fill and applies it, or returns the reason it is skipped (nothing changes then).
    function _settleFill(
        uint64 seq,
        uint256 fillIndex,
        Order calldata maker,
        Order calldata taker,
        bytes32 makerHash,
        bytes32 takerHash,
        uint64 amount,
        MarketCache memory mc
    ) internal returns (uint8) {
        address makerTrader = maker.trader;
        address takerTrader = taker.trader;
        if (makerTrader == takerTrader) return SKIP_SELF_TRADE;
        uint32 market = maker.market;
        uint8 makerSide = maker.side;
        if (market != taker.market || makerSide == taker.side || makerSide > 1 || taker.side > 1) {
            return SKIP_MARKET_MISMATCH;
        }
        if (mc.id != market) _loadMarket(mc, market);
        if (!mc.ok) return SKIP_MARKET_MISMATCH;
        if (maker.expiry <= block.timestamp || taker.expiry <= block.timestamp) return SKIP_EXPIRED;
        uint64 price = maker.price;
        if (makerSide == 0 ? price < taker.price : taker.price < price) return SKIP_NO_CROSS;
        // Maker = the order earlier by (createdAt, hash): the proposer cannot pick the price.
        if (maker.createdAt > taker.createdAt || (maker.createdAt == taker.createdAt && makerHash >= takerHash)) {
            return SKIP_WRONG_MAKER;
        }
        if (taker.flags & FLAG_POST_ONLY != 0) return SKIP_POST_ONLY_TAKER;
        if (amount == 0 || !_boundsOk(maker, mc.params) || !_boundsOk(taker, mc.params)) return SKIP_BOUNDS;
        if (!_triggerHolds(maker, mc.oraclePrice) || !_triggerHolds(taker, mc.oraclePrice)) return SKIP_TRIGGER;

        Side memory ms = _loadSide(makerTrader, market, mc.fundingIndex);
        Side memory ts = _loadSide(takerTrader, market, mc.fundingIndex);
        uint256 makerState = orderState[makerTrader][maker.salt];
        uint256 takerState = orderState[takerTrader][taker.salt];
        if (
            makerState & CANCELLED_BIT != 0 || takerState & CANCELLED_BIT != 0
                || maker.salt < ms.account.cancelledUpTo || taker.salt < ts.account.cancelledUpTo
        ) return SKIP_CANCELLED;
        uint256 makerFilled = uint64(makerState) + uint256(amount);
        uint256 takerFilled = uint64(takerState) + uint256(amount);
        if (makerFilled > maker.amount || takerFilled > taker.amount) return SKIP_OVERFILL;
        // FOK: only in one fill of the whole amount (so never partly).
        if (
            (maker.flags & FLAG_FOK != 0 && (uint64(makerState) != 0 || amount != maker.amount))
                || (taker.flags & FLAG_FOK != 0 && (uint64(takerState) != 0 || amount != taker.amount))
        ) return SKIP_FOK;
        if (!_reduceOnlyOk(maker, ms.position.size, amount) || !_reduceOnlyOk(taker, ts.position.size, amount)) {
            return SKIP_REDUCE_ONLY;
        }
        int256 signedMaker = makerSide == 0 ? int256(uint256(amount)) : -int256(uint256(amount));
        uint64 maxPosition = mc.params.maxPosition;
        if (!_applyToSide(ms, signedMaker, price, maxPosition) || !_applyToSide(ts, -signedMaker, price, maxPosition))
        {
            return SKIP_POSITION_LIMIT;
        }
        uint256 notional = uint256(amount) * price;
        uint256 makerFee = _ceilDivU(notional * mc.params.makerFee, SIZE_ONE * PPM);
        uint256 takerFee = _ceilDivU(notional * mc.params.takerFee, SIZE_ONE * PPM);
        ms.balance -= int256(makerFee * SIZE_ONE);
        ts.balance -= int256(takerFee * SIZE_ONE);
        if (!_healthyAfter(ms, mc)) return SKIP_MARGIN_MAKER;
        if (!_healthyAfter(ts, mc)) return SKIP_MARGIN_TAKER;

        // Everything checked: write.
        orderState[makerTrader][maker.salt] = makerState + amount;
        orderState[takerTrader][taker.salt] = takerState + amount;
        _storeSide(ms, market);
        _storeSide(ts, market);
        feesCollected += int256(makerFee + takerFee);
        emit OrderFilled(
            seq,
            makerTrader,
            takerTrader,
            fillIndex,
            makerHash,
            takerHash,
            maker.salt,
            taker.salt,
            market,
            taker.side,
            price,
            amount,
            uint64(makerFilled),
            uint64(takerFilled),
            makerFee,
            takerFee,
            ms.balance,
            ts.balance,
            ms.position.size,
            ts.position.size
        );
        return 0;
    }

    function _boundsOk(Order calldata o, MarketParams memory p) internal pure returns (bool) {
        uint64 orderPrice = o.price;
        uint64 orderAmount = o.amount;
        uint8 kind = o.triggerKind;
        uint64 trigger = o.triggerPrice;
        return o.flags & ~KNOWN_FLAGS == 0 && kind <= TRIGGER_TAKE_PROFIT
            && (kind == TRIGGER_NONE ? trigger == 0 : trigger != 0 && trigger <= p.maxPrice) && orderPrice != 0
            && orderPrice <= p.maxPrice && orderPrice % p.tick == 0 && orderAmount >= p.minSize
            && orderAmount <= p.maxOrderSize;
    }

    function _triggerHolds(Order calldata o, uint64 oraclePrice) internal pure returns (bool) {
        uint8 kind = o.triggerKind;
        if (kind == TRIGGER_NONE) return true;
        bool buy = o.side == 0;
        uint64 trigger = o.triggerPrice;
        if (kind == TRIGGER_STOP_LOSS) {
            return buy ? oraclePrice >= trigger : oraclePrice <= trigger;
        }
        return buy ? oraclePrice <= trigger : oraclePrice >= trigger;
    }

    function _reduceOnlyOk(Order calldata o, int64 size, uint64 amount) internal pure returns (bool) {
        if (o.flags & FLAG_REDUCE_ONLY == 0) return true;
        if (o.side == 0) return size < 0 && uint256(uint64(-int64(size))) >= amount; // a buy reduces a short
        return size > 0 && uint256(uint64(size)) >= amount; // a sell reduces a long
    }

    function _loadSide(address trader, uint32 market, int64 index) internal view returns (Side memory s) {
        s.trader = trader;
        s.account = accounts[trader];
        s.position = positions[trader][market];
        // Settle funding on this position before it changes.
        s.fundingOwed = _fundingOwed(s.position, index);
        s.balance = int256(s.account.balance) - s.fundingOwed * int256(SIZE_ONE);
        s.position.fundingIndex = index;
    }

    /// Applies a signed fill to the side's position (docs/units.md "Applying a fill"); false if the position limit
    /// would be exceeded.
    function _applyToSide(Side memory s, int256 q, uint64 price, uint64 maxPosition) internal pure returns (bool) {
        int256 size = s.position.size;
        int256 cost = s.position.cost;
        int256 p = int256(uint256(price));
        int256 newSize = size + q;
        uint256 absNew = _abs(newSize);
        uint256 absOld = _abs(size);
        // A position above the limit (say after updateMarket lowered it) may still shrink.
        if (absNew > maxPosition && absNew >= absOld) return false;
        int256 value = q * p;
        s.balance -= value;
        if (size == 0 || (size > 0) == (q > 0)) {
            cost += value;
            s.shrankOnly = false;
        } else if (_abs(q) <= absOld) {
            cost -= cost * int256(_abs(q)) / int256(absOld);
            s.shrankOnly = true;
        } else {
            cost = newSize * p;
            s.shrankOnly = false;
        }
        // Checked narrowing (unreachable within docs/units.md bounds, but never a silent truncation).
        if (
            newSize > type(int64).max || cost > type(int128).max || cost < type(int128).min
                || s.balance > type(int128).max || s.balance < type(int128).min
        ) return false;
        s.position.size = int64(newSize);
        s.position.cost = int128(cost);
        return true;
    }

    function _healthyAfter(Side memory s, MarketCache memory mc) internal view returns (bool) {
        uint64 bit = uint64(1) << mc.id;
        uint64 mask = s.position.size != 0 ? s.account.openMask | bit : s.account.openMask & ~bit;
        s.account.openMask = mask;
        (int256 eq, uint256 initial, uint256 maintenance) = _healthWith(s.trader, mask, s.balance, mc, s.position);
        return eq >= int256(s.shrankOnly ? maintenance : initial);
    }

    function _storeSide(Side memory s, uint32 market) internal {
        positions[s.trader][market] = s.position;
        accounts[s.trader] = Account({
            balance: int128(s.balance), openMask: s.account.openMask, cancelledUpTo: s.account.cancelledUpTo
        });
        if (s.fundingOwed != 0) fundingPool += s.fundingOwed;
    }

    function _emitAccount(Side memory s, uint32 market) internal {
        emit AccountUpdated(s.trader, market, s.position.size, s.position.cost, s.position.fundingIndex, s.balance);
    }

    // ------------------------------------------------------------------------------------------------ liquidation
    /// Anyone may liquidate `amount` of `trader`'s position in `market` while the trader's equity is below
    /// maintenance: the caller takes the position over at the oracle price, the trader pays a penalty to the
    /// insurance fund, and the caller must end above initial margin.
    function liquidate(address trader, uint32 market, uint64 amount) external {
        if (trader == msg.sender) revert BadLiquidation(1);
        MarketCache memory mc;
        _loadMarket(mc, market);
        if (!mc.ok) revert UnknownMarket(market);
        {
            Account memory a = accounts[trader];
            (int256 eq,, uint256 maintenance) = _health(trader, a.openMask, a.balance);
            if (eq >= int256(maintenance)) revert AccountHealthy(eq, maintenance);
        }
        Side memory t = _loadSide(trader, market, mc.fundingIndex);
        int64 size = t.position.size;
        if (amount == 0 || size == 0 || _abs(int256(size)) < amount) revert BadLiquidation(2);
        uint64 price = mc.oraclePrice;
        int256 q = size > 0 ? -int256(uint256(amount)) : int256(uint256(amount)); // the trader's closing side
        if (!_applyToSide(t, q, price, type(uint64).max)) revert BadLiquidation(4);
        _healthyAfter(t, mc); // sets the trader's open-market mask
        uint256 penalty = _ceilDivU(uint256(amount) * price * mc.params.liqPenalty, SIZE_ONE * PPM);
        {
            (int256 eqAfter,,) = _healthWith(trader, t.account.openMask, t.balance, mc, t.position);
            int256 cap = eqAfter > 0 ? eqAfter / int256(SIZE_ONE) : int256(0);
            if (int256(penalty) > cap) penalty = uint256(cap);
        }
        t.balance -= int256(penalty * SIZE_ONE);
        insuranceFund += int256(penalty);

        Side memory l = _loadSide(msg.sender, market, mc.fundingIndex);
        if (!_applyToSide(l, -q, price, mc.params.maxPosition)) revert BadLiquidation(3);
        l.shrankOnly = false; // the liquidator must end above initial margin whatever it took over
        if (!_healthyAfter(l, mc)) {
            (int256 eq, uint256 initial,) = _healthWith(msg.sender, l.account.openMask, l.balance, mc, l.position);
            revert InsufficientMargin(eq, initial);
        }
        int256 uncovered = 0;
        if (t.account.openMask == 0 && t.balance < 0) {
            int256 deficit = _ceilDiv(-t.balance, int256(SIZE_ONE));
            int256 fromInsurance = insuranceFund >= deficit ? deficit : (insuranceFund > 0 ? insuranceFund : int256(0));
            insuranceFund -= fromInsurance;
            uncovered = deficit - fromInsurance;
            badDebt += uncovered;
            t.balance += deficit * int256(SIZE_ONE);
        }
        _storeSide(t, market);
        _storeSide(l, market);
        _emitAccount(t, market);
        _emitAccount(l, market);
        emit Liquidated(trader, msg.sender, market, amount, price, penalty, uncovered);
    }

    // ------------------------------------------------------------------------------------------------ margin math
    function _fundingOwed(Position memory p, int64 index) internal pure returns (int256) {
        if (p.size == 0) return 0;
        return _ceilDiv(int256(p.size) * (int256(index) - int256(p.fundingIndex)), int256(SIZE_ONE));
    }

    function _health(address trader, uint64 mask, int256 balance)
        internal
        view
        returns (int256 eq, uint256 initial, uint256 maintenance)
    {
        MarketCache memory none;
        none.id = NO_MARKET;
        Position memory unused;
        return _healthWith(trader, mask, balance, none, unused);
    }

    /// Equity and requirements (scaled: atoms x SIZE_ONE) at oracle prices. For market `mc.id`, `current` stands in
    /// for the stored position (its funding already settled into `balance`) and `mc` for the stored market.
    function _healthWith(
        address trader,
        uint64 mask,
        int256 balance,
        MarketCache memory mc,
        Position memory current
    ) internal view returns (int256 eq, uint256 initial, uint256 maintenance) {
        eq = balance;
        while (mask != 0) {
            uint32 m = uint32(_lowestBit(mask));
            mask &= mask - 1;
            int256 size;
            uint256 oraclePrice;
            uint256 imr;
            uint256 mmr;
            if (m == mc.id) {
                size = current.size;
                oraclePrice = mc.oraclePrice;
                imr = mc.params.imr;
                mmr = mc.params.mmr;
            } else {
                Market storage mkt = markets[m];
                Position memory p = positions[trader][m];
                size = p.size;
                oraclePrice = mkt.oraclePrice;
                imr = mkt.params.imr;
                mmr = mkt.params.mmr;
                eq -= _fundingOwed(p, mkt.fundingIndex) * int256(SIZE_ONE);
            }
            eq += size * int256(oraclePrice);
            uint256 notional = _abs(size) * oraclePrice;
            initial += _ceilDivU(notional * imr, PPM);
            maintenance += _ceilDivU(notional * mmr, PPM);
        }
    }

    function _lowestBit(uint64 x) internal pure returns (uint256 i) {
        while (x & 1 == 0) {
            x >>= 1;
            i++;
        }
    }

    function _abs(int256 x) internal pure returns (uint256) {
        return x >= 0 ? uint256(x) : uint256(-x);
    }

    /// Rounds toward +infinity (d > 0).
    function _ceilDiv(int256 x, int256 d) internal pure returns (int256) {
        return x > 0 ? (x + d - 1) / d : x / d;
    }

    function _ceilDivU(uint256 x, uint256 d) internal pure returns (uint256) {
        return x == 0 ? 0 : (x - 1) / d + 1;
    }

    // ------------------------------------------------------------------------------------------------ EIP-712
    function _buildDomainSeparator() internal view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function _domainSeparator() internal view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _buildDomainSeparator();
    }

    function _digest(bytes32 domain, bytes32 structHash) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", domain, structHash));
    }

    function _orderStructHash(Order calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ORDER_TYPEHASH,
                o.trader,
                o.market,
                o.side,
                o.price,
                o.amount,
                o.salt,
                o.createdAt,
                o.expiry,
                o.flags,
                o.triggerKind,
                o.triggerPrice
            )
        );
    }

    function _batchDigest(bytes32 domain, Batch calldata b, bytes32[] memory hashes) internal pure returns (bytes32) {
        bytes32[] memory fillHashes = new bytes32[](b.fills.length);
        for (uint256 i = 0; i < b.fills.length; i++) {
            Fill calldata f = b.fills[i];
            fillHashes[i] = keccak256(abi.encode(FILL_TYPEHASH, f.maker, f.taker, f.amount));
        }
        bytes32 structHash = keccak256(
            abi.encode(
                BATCH_TYPEHASH,
                b.seq,
                b.round,
                b.prevBatchHash,
                b.setVersion,
                b.deadline,
                keccak256(abi.encodePacked(hashes)),
                keccak256(abi.encodePacked(fillHashes))
            )
        );
        return _digest(domain, structHash);
    }

    /// ecrecover with signature hygiene: v in {27, 28}, low s, non-zero r and s; address(0) when invalid.
    function _recover(bytes32 digest, bytes32 r, bytes32 s, uint8 v) internal pure returns (address) {
        if (v != 27 && v != 28) return address(0);
        if (r == 0 || s == 0 || uint256(s) > HALF_N) return address(0);
        return ecrecover(digest, v, r, s);
    }

    // ------------------------------------------------------------------------------------------------ views
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparator();
    }

    function hashOrder(Order calldata order) external view returns (bytes32) {
        return _digest(_domainSeparator(), _orderStructHash(order));
    }

    function hashBatch(Batch calldata b) external view returns (bytes32) {
        bytes32 domain = _domainSeparator();
        bytes32[] memory hashes = new bytes32[](b.orders.length);
        for (uint256 i = 0; i < b.orders.length; i++) {
            hashes[i] = _digest(domain, _orderStructHash(b.orders[i].order));
        }
        return _batchDigest(domain, b, hashes);
    }

    function getMarket(uint32 id) external view returns (Market memory) {
        return markets[id];
    }

    /// The account's balance (collateral atoms x SIZE_ONE, exact) and its mask of markets with a position.
    function getAccount(address trader) external view returns (int256 balance, uint64 openMask) {
        Account memory a = accounts[trader];
        return (a.balance, a.openMask);
    }

    /// Salts below this are cancelled for `trader` (cancelUpTo).
    function cancelledUpTo(address trader) external view returns (uint64) {
        return accounts[trader].cancelledUpTo;
    }

    function getPosition(address trader, uint32 market) external view returns (Position memory) {
        return positions[trader][market];
    }

    /// (filled amount, cancelled) of (trader, salt); cancelUpTo is reported by `cancelledUpTo`.
    function getOrderState(address trader, uint64 salt) external view returns (uint64 filled, bool cancelled) {
        uint256 st = orderState[trader][salt];
        return (uint64(st), st & CANCELLED_BIT != 0);
    }

    /// Equity and initial / maintenance requirements at the current oracle prices (unsettled funding included),
    /// scaled like balances (collateral atoms x SIZE_ONE).
    function getHealth(address trader) external view returns (int256 equity, uint256 initial, uint256 maintenance) {
        Account memory a = accounts[trader];
        return _health(trader, a.openMask, a.balance);
    }

    function getRelayers() external view returns (address[] memory, uint16 threshold, uint64 version) {
        return (members, thresholdOf[setVersion], setVersion);
    }

    function isRelayer(uint64 version, address who) external view returns (bool) {
        return inSet[version][who];
    }
}
