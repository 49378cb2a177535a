"""The text builder's fixed samples: the parity sample the gate measures on, and the
calibration sentences SmoothQuant's activation ranges come from (kept apart, so the gate is
never measured on what the recipe was fitted to). A user's definition may replace the parity
sample with its own (``sample``). Editing either changes the inputs digest, so cached
artifacts are re-verified.
"""

from __future__ import annotations

from typing import Final

# The fixed parity sample. Varied on purpose: catalogue titles and short queries (the traffic),
# long sentences (attention over many tokens), numbers and codes (wordpiece-heavy), other
# scripts (mostly [UNK]/byte pieces for this English model, where quantization error shows
# first). Editing it changes inputs_digest, so cached artifacts are re-verified.
PARITY_SENTENCES: Final[tuple[str, ...]] = (
    # product titles
    "Stainless steel chef's knife, 20 cm blade, full tang",
    "Men's waterproof hiking boots with Vibram sole, size 44",
    "Organic cold-pressed extra virgin olive oil 500ml",
    "USB-C to HDMI adapter 4K 60Hz, aluminium housing",
    "Wireless noise-cancelling over-ear headphones, 30h battery",
    "Children's wooden building blocks set (100 pieces)",
    "Cotton crew-neck T-shirt, navy blue, slim fit",
    "Cast iron skillet 26cm pre-seasoned",
    "LEGO Technic 42115 Lamborghini Sián FKP 37",
    "Frozen Atlantic salmon fillets, skin on, 4 x 125 g",
    "Portland cement, 25 kg bag",
    "Parts of pumps for liquids, of cast iron",
    # short queries
    "cheap flights",
    "red dress",
    "iphone 15 case",
    "how to boil an egg",
    "best laptop for students",
    "weather tomorrow",
    "gluten free bread recipe",
    "python list comprehension",
    "dog",
    "?",
    # sentences, short to long
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A man is playing a guitar on the street corner.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "She hasn't replied to my email since last Tuesday, which is unusual for her.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee postponed the vote until more information about the budget was available.",
    "After three days of heavy rain, the river overflowed its banks and flooded the low-lying "
    "fields, forcing farmers to move their livestock to higher ground while volunteers filled "
    "sandbags along the main road into the village.",
    "In distributed systems, a cache in front of an expensive computation only pays off when "
    "the keys are stable: if the same input can map to two different keys, or two different "
    "inputs to the same key, the cache either misses when it should hit or, worse, returns a "
    "value computed for something else, and neither failure shows up in a latency graph.",
    "Machine translation quality has improved dramatically, yet idioms, sarcasm and domain "
    "jargon still trip up even the largest models, especially when the source text is short "
    "and offers little context to disambiguate the intended meaning of each word.",
    "The quick brown fox jumps over the lazy dog.",
    "I love this product!!! Would definitely buy again :)",
    "Terrible customer service, never ordering from here again.",
    # numbers and codes
    "Order #A-39201 shipped on 2024-03-15 via DHL, tracking 1Z999AA10123456784",
    "3.14159 26535 89793 23846",
    "Total: $1,299.99 incl. 20% VAT",
    "Call +44 20 7946 0958 between 9:00 and 17:30",
    "HS code 8413.91 - parts of pumps",
    "SKU 00012345-XL-BLK",
    "404 Not Found",
    "v2.3.1-rc4 (build 7781)",
    # other languages and scripts
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Chaussures de course légères pour femme, taille 38",
    "¿Dónde está la estación de tren más cercana?",
    "Il gatto dorme sul divano tutto il pomeriggio.",
    "Eu gosto de café com leite de manhã.",
    "Dit is een voorbeeldzin in het Nederlands.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "東京は日本の首都です。",
    "我喜欢在周末读书和喝茶。",
    "서울의 날씨가 오늘 아주 좋습니다.",
    "مرحبا بكم في متجرنا الإلكتروني",
    "שלום עולם",
    "नमस्ते, आप कैसे हैं?",
    "Ελληνικό ελαιόλαδο, 1 λίτρο",
    "Zażółć gęślą jaźń",
    "Tôi thích ăn phở vào buổi sáng.",
    # odd inputs
    "🙂🚀🔥 great launch",
    "def add(a, b):\n    return a + b",
    "<div class='price'>9.99</div>",
    "ALL CAPS SHOUTING TITLE FOR A SALE",
    "e-mail: first.last@example.com",
    "tl;dr: it works",
)

# Activation ranges for SmoothQuant are measured on these, never on PARITY_SENTENCES: a gate
# measured on the data the recipe was fitted to would flatter it. Same mix of kinds as the
# parity sample (titles, customs descriptions, queries, sentences, codes, other scripts).
CALIBRATION_SENTENCES: Final[tuple[str, ...]] = (
    "Women's leather ankle boots, block heel, black, size 39",
    "Stainless steel insulated water bottle 750 ml",
    "Bluetooth 5.3 portable speaker, IPX7 waterproof",
    "Ergonomic office chair with lumbar support and adjustable armrests",
    "Non-stick frying pan 28 cm, induction compatible",
    "4K UHD smart TV 55 inch with HDR10",
    "Organic green tea bags, 100 count",
    "Kids' waterproof rain jacket with hood, yellow",
    "Mechanical gaming keyboard, RGB backlit, brown switches",
    "Memory foam pillow, hypoallergenic cover",
    "Electric toothbrush with 3 brushing modes and travel case",
    "Garden hose 30 m with spray nozzle",
    "Yoga mat 6 mm thick, non-slip, purple",
    "Espresso machine 15 bar with milk frother",
    "Printer paper A4 80 g/m2, 500 sheets",
    "Smartphone screen protector, tempered glass, 2 pack",
    "Dried pasta, durum wheat semolina, 1 kg",
    "Live bovine animals, pure-bred breeding",
    "Fresh or chilled tomatoes",
    "Tubes and pipes of copper alloys",
    "Woven fabrics of cotton, containing 85% or more by weight of cotton",
    "Electric motors and generators, output not exceeding 37.5 W",
    "Hand tools for agriculture, horticulture or forestry",
    "Sweaters, pullovers and cardigans of wool, knitted",
    "wireless mouse",
    "running shoes men",
    "cheap hotels in paris",
    "birthday gift ideas for dad",
    "how to fix a leaking tap",
    "vegan chocolate cake",
    "usb c charger 65w",
    "train times london to manchester",
    "symptoms of flu",
    "winter tyres 205/55 r16",
    "A woman is slicing an onion in the kitchen.",
    "Two dogs are running across a snowy field.",
    "The museum will be closed for renovation until next spring.",
    "Prices rose sharply in the third quarter, driven by energy costs.",
    "Please restart your device and try again.",
    "The package was delivered to the wrong address.",
    "Researchers found that regular exercise improves sleep quality in older adults.",
    "The train was delayed by forty minutes because of a signal failure near the station.",
    "Our return policy allows customers to send back unused items within thirty days of "
    "purchase for a full refund, provided the original packaging is intact.",
    "The new software update introduces a redesigned settings menu, faster start-up times, "
    "and a battery saver mode that limits background activity when the charge drops low.",
    "Despite the heavy snowfall overnight, the city's buses kept running on most routes, "
    "although passengers were warned to expect delays throughout the morning rush hour.",
    "Great value for money, arrived quickly and works perfectly.",
    "The size runs small, order one size up.",
    "Not as described, the colour is completely different.",
    "Invoice INV-2023-00871 due 2023-11-30, amount EUR 2,450.00",
    "Flight LH 2034 departs 07:45 from gate B22",
    "Model no. WX-4410-B, serial 99812-AC",
    "Net weight 1.25 kg, dimensions 30 x 20 x 15 cm",
    "ISBN 978-3-16-148410-0",
    "Temperature range -20 °C to +60 °C",
    "Ein Paar Socken aus Merinowolle, Größe 43-46",
    "Sac à dos de randonnée 30 litres avec housse de pluie",
    "Zapatillas deportivas para niños con velcro",
    "Borsa in pelle fatta a mano, colore marrone",
    "Camiseta de algodão orgânico, tamanho M",
    "Кофеварка с таймером и автоотключением",  # noqa: RUF001 (Russian on purpose)
    "防水スマートウォッチ 心拍数モニター付き",
    "无线蓝牙耳机 降噪 长续航",
    "무선 충전기 고속 충전 지원",
    "ساعة يد رجالية مقاومة للماء",
    "Καφετιέρα εσπρέσο αλουμινίου",
    "Đồng hồ thông minh chống nước",
    "😀 best deal ever!!!",
    "for i in range(10): print(i)",
    "<h1>Summer Sale</h1>",
    "BUY 2 GET 1 FREE - LIMITED OFFER",
    "contact: support@shop.example",
    "N/A",
    "ok",
    "Replacement filter cartridge compatible with most refrigerator models",
    "Set of 6 crystal wine glasses, 450 ml, dishwasher safe",
    "Cordless drill driver 18V with two batteries and charger",
    "Baby stroller, lightweight, one-hand fold",
    "Vitamin D3 1000 IU, 365 softgels",
    "Acrylic paint set, 24 colours, 12 ml tubes",
)
